"""Training config: strict loading, overrides, and every bad value failing with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpctrain.errors import ConfigError
from hpctrain.train.config import SECTIONS, TrainConfig, load_config
from hpctrain.train.plan import check_runtime, frozen_names

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml"))


@pytest.fixture
def shard_dir(tmp_path):
    import numpy as np

    from hpctrain.data.shards import ShardWriter

    d = tmp_path / "shards"  # real (tiny) shards: check_runtime opens every one
    rng = np.random.default_rng(0)
    with ShardWriter(d, feature_names=["a", "b"], sample_shape=(2,), rows_per_shard=512, classes=[0, 1]) as w:
        for split, n in (("train", 2048), ("val", 16)):
            w.add(rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 2, n), split=split)
    return d


def base(shard_dir, **sections):
    d = {"data": {"dir": str(shard_dir)}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return d


def test_examples_load():
    assert {p.name for p in EXAMPLES} >= {"digits_cnn.yaml", "tabular_mlp.yaml", "attention.yaml"}
    for p in EXAMPLES:
        cfg = load_config(p)
        assert isinstance(cfg, TrainConfig)
        assert cfg.run.dir == Path("runs") / cfg.run.name


def test_sections_match_the_interface():
    import dataclasses

    assert tuple(f.name for f in dataclasses.fields(TrainConfig)) == SECTIONS


def test_defaults_and_overrides(shard_dir):
    cfg = load_config(base(shard_dir), ["run.name=abc", "optimizer.lr=0.5", "model.hidden=[8, 4]",
                                        "comm.backend=mpi"])
    assert cfg.run.dir == Path("runs/abc") and cfg.optimizer.lr == 0.5 and cfg.model.hidden == [8, 4]
    assert cfg.comm.backend == "mpi" and cfg.schedule.scale_lr is True
    cfg = load_config(base(shard_dir), ["run.dir=/x/y z"])
    assert cfg.run.dir == Path("/x/y z")


@pytest.mark.parametrize("data,overrides,pattern", [
    ({"optimzer": {"lr": 1}}, [], r"unknown key 'optimzer'.*Did you mean 'optimizer'.*Valid keys: .*augmentation"),
    ({}, ["optimizer.learning_rate=0.1"], r"unknown key 'optimizer.learning_rate'.*Valid keys of optimizer: .*lr"),
    ({}, ["data.batch_size=big"], r"data.batch_size: got 'big'.*expected an integer"),
    ({}, ["data.batch_size=2.5"], r"data.batch_size: got 2.5"),
    ({}, ["optimizer.lr=-0.1"], r"optimizer.lr: got -0.1, expected a finite number > 0"),
    ({}, ["optimizer.lr=.nan"], r"optimizer.lr"),
    ({}, ["optimizer.name=lamb"], r"optimizer.name: got 'lamb', expected one of"),
    ({}, ["comm.backend=hvd"], r"comm.backend: got 'hvd'.*horovod"),
    ({}, ["model.heads=3"], r"model.heads: 3 does not divide model.embed_dim=32"),
    ({}, ["model.dropout=1.0"], r"model.dropout"),
    ({}, ["comm.backend=mpi", "comm.fp16_compression=true"], r"comm.fp16_compression"),
    ({}, ["run.epochs=0"], r"run.epochs"),
    ({}, ["schedule.gamma=0"], r"schedule.gamma"),
    ({}, ["model.freeze=[a.*]"], r"model.freeze.*model.init_from"),
    ({}, ["run.name=a/b"], r"run.name"),
    ({}, ["run.seed=-1"], r"run.seed: got -1, expected an integer in \[0, 2\*\*31\)"),
    ({}, ["run.seed=4294967296"], r"run.seed"),
    ({}, ["data=3"], r"data: got 3, expected a section"),
])
def test_bad_values_name_the_key(shard_dir, data, overrides, pattern):
    d = base(shard_dir)
    d.update(data)
    with pytest.raises(ConfigError, match=pattern):
        load_config(d, overrides)


def test_missing_data_dir_key():
    with pytest.raises(ConfigError, match=r"data.dir: missing"):
        load_config({})


def test_runtime_checks(tmp_path, shard_dir):
    cfg = load_config(base(shard_dir, data={"global_batch_size": 96}, comm={"backward_passes_per_step": 2}))
    plan = check_runtime(cfg, 3)
    assert (plan.batch_size, plan.accum, plan.global_batch, plan.lr) == (16, 2, 96, 3 * cfg.optimizer.lr)
    with pytest.raises(ConfigError, match=r"data.global_batch_size: 96 is not divisible by world size 5 x "
                                          r"comm.backward_passes_per_step 2 = 10"):
        check_runtime(cfg, 5)
    missing = load_config(base(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"data.dir: '.*nope' is not a directory"):
        check_runtime(missing, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"data.dir: .* has no manifest.json"):
        check_runtime(load_config(base(empty)), 1)
    with pytest.raises(ConfigError, match=r"model.init_from: '.*gone.pt' does not exist"):
        check_runtime(load_config(base(shard_dir, model={"init_from": str(tmp_path / "gone.pt")})), 1)
    unscaled = load_config(base(shard_dir, schedule={"scale_lr": False}))
    assert check_runtime(unscaled, 8).lr == unscaled.optimizer.lr


def test_runtime_checks_what_training_would_only_find_later(tmp_path, shard_dir):
    # 2048 train rows on 4 ranks: 512 per rank, so a batch of 513 gives no full batch at all
    assert check_runtime(load_config(base(shard_dir, data={"batch_size": 512})), 4).batch_size == 512
    with pytest.raises(ConfigError, match=r"data.batch_size: the 'train' split has 2048 rows, too few for 4 "
                                          r"rank\(s\) x batch 513 \(0 batches per epoch\)"):
        check_runtime(load_config(base(shard_dir, data={"batch_size": 513})), 4)
    a_file = tmp_path / "taken.csv"
    a_file.write_text("x\n")
    with pytest.raises(ConfigError, match=r"run.dir: '.*taken.csv' exists and is not a directory"):
        check_runtime(load_config(base(shard_dir, run={"dir": str(a_file)})), 1)
    bad_imputer = tmp_path / "imputer.json"
    bad_imputer.write_text('{"strategy": \n')
    with pytest.raises(ConfigError, match=r"imputation.imputer: '.*imputer.json' is not valid JSON"):
        check_runtime(load_config(base(shard_dir, imputation={"imputer": str(bad_imputer)})), 1)


def test_corrupt_shard_fails_before_training(shard_dir):
    victim = sorted(shard_dir.glob("val-*.h5"))[-1]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated, as by a full disk or a killed copy
    with pytest.raises(ConfigError, match=rf"data.dir: shard file '.*{victim.name}' cannot be opened as HDF5"):
        check_runtime(load_config(base(shard_dir)), 2)


def test_frozen_names():
    names = ["features.0.weight", "features.0.bias", "features.2.weight", "head.weight"]
    assert frozen_names(["features.0.*"], names) == ["features.0.bias", "features.0.weight"]
    with pytest.raises(ConfigError, match="matches no parameter"):
        frozen_names(["feature.*"], names)


def test_cli_bad_config_fails_fast_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dir: x, batch_sise: 3}\n")
    p = subprocess.run([sys.executable, "-m", "hpctrain", "train", str(bad)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "unknown key 'data.batch_sise'" in p.stderr and "batch_size" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_check_and_print(tmp_path, shard_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dir: '{shard_dir}'}}\nrun: {{name: n}}\n")
    p = subprocess.run([sys.executable, "-m", "hpctrain", "train", str(cfg), "--check", "--set", "data.batch_size=8"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "global batch 8" in p.stdout
    p = subprocess.run([sys.executable, "-m", "hpctrain", "train", str(cfg), "--print-config"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    import yaml

    assert yaml.safe_load(p.stdout)["run"]["dir"] == "runs/n"


def test_docs_reference_is_generated_from_the_dataclasses():
    from hpctrain.train.config import reference_markdown

    text = (REPO / "docs" / "training.md").read_text()
    assert reference_markdown() in text, ("docs/training.md is out of date: regenerate its reference with "
                                          "hpctrain.train.config.reference_markdown()")
