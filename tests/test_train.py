"""The trainer in one process: exact resume, checkpoint fallback, early stopping, transfer
learning, the finished-run guard, metrics and plots. Small data, MPI backend (a singleton)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def blobs_shards(root: Path, *, classes: int = 3, train: int = 240, val: int = 60, seed: int = 0,
                 features: int = 6) -> Path:
    """Separable Gaussian blobs as a shard directory (train and val splits)."""
    from hpctrain.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(classes, features))
    out = root / f"blobs{classes}"
    with ShardWriter(out, feature_names=[f"f{i}" for i in range(features)], sample_shape=(features,),
                     rows_per_shard=64, classes=list(range(classes))) as w:
        for split, n in (("train", train), ("val", val)):
            y = rng.integers(0, classes, n)
            x = (centers[y] + rng.normal(0, 1.0, size=(n, features))).astype(np.float32)
            w.add(x, y.astype(np.int64), split=split)
    return out


def make_cfg(data_dir: Path, run_dir: Path, **sections):
    from hpctrain.train.config import load_config

    base = {
        "run": {"name": "t", "dir": str(run_dir), "epochs": 3, "seed": 5},
        "data": {"dir": str(data_dir), "batch_size": 16, "prefetch": 0},
        "model": {"kind": "mlp", "hidden": [16], "dropout": 0.2},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "checkpoint": {"every_steps": 4, "keep": 50},
        "logging": {"every_steps": 2, "plots": False, "progress": False},
        "comm": {"backend": "mpi"},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return load_config(base)


@pytest.fixture(scope="module")
def data3(tmp_path_factory):
    return blobs_shards(tmp_path_factory.mktemp("d3"))


def state_of(run_dir: Path, name: str = "final.pt"):
    from hpctrain.train.checkpoint import load

    return load(run_dir / "checkpoints" / name)


def assert_same_tree(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_exact_resume_is_bit_for_bit(tmp_path, data3):
    from hpctrain.train.trainer import train

    full = train(make_cfg(data3, tmp_path / "full"))
    assert full.status == "completed" and full.step == 3 * (240 // 16)

    calls = {"n": 0}

    def stop():  # stop mid-epoch 1, at a step that is not a checkpoint step
        calls["n"] += 1
        return calls["n"] == 22

    cfg = make_cfg(data3, tmp_path / "cut")
    first = train(cfg, stop_requested=stop)
    assert first.status == "interrupted" and first.step == 21
    assert not (tmp_path / "cut" / "result.json").exists()
    second = train(cfg)
    assert second.status == "completed" and second.resumed_from.endswith("step-00000021.pt")
    a, b = state_of(tmp_path / "full"), state_of(tmp_path / "cut")
    assert_same_tree(a["model"], b["model"], "model")
    assert_same_tree(a["optimizer"], b["optimizer"], "optimizer")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    # The metrics log of the resumed run has no duplicated steps.
    steps = [r["step"] for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == full.step
    assert full.metrics["val_macro_f1"] == second.metrics["val_macro_f1"]


def test_truncated_newest_checkpoint_falls_back(tmp_path, data3, capfd):
    from hpctrain.train.trainer import train

    cfg = make_cfg(data3, tmp_path / "r", run={"epochs": 2})
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 11

    assert train(cfg, stop_requested=stop).step == 10
    ckpts = tmp_path / "r" / "checkpoints"
    newest = ckpts / "step-00000010.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a torn write on a file system without atomic rename
    res = train(cfg)
    assert res.status == "completed"
    assert res.resumed_from.endswith("step-00000008.pt")
    err = capfd.readouterr().err
    assert "skipping checkpoint" in err and "step-00000010.pt" in err


def test_completed_run_returns_at_once(tmp_path, data3):
    from hpctrain.train.trainer import train

    cfg = make_cfg(data3, tmp_path / "r", run={"epochs": 1})
    done = train(cfg)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    again = train(cfg)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert again.status == "completed" and again.step == done.step
    assert before == after
    res = json.loads((tmp_path / "r" / "result.json").read_text())
    assert res["status"] == "completed" and res["step"] == done.step and "val_macro_f1" in res["metrics"]


def test_early_stopping_stops_and_restores_best(tmp_path, data3):
    from hpctrain.train.trainer import train

    # min_delta is so large that no epoch after the first counts as better: stop after
    # 1 + patience epochs, and the final weights are those of epoch 0.
    cfg = make_cfg(data3, tmp_path / "r", run={"epochs": 10},
                   regularization={"early_stopping": True, "patience": 2, "min_delta": 10.0, "monitor": "val_loss"},
                   checkpoint={"every_steps": 0, "every_epoch": True})
    res = train(cfg)
    per_epoch = 240 // 16
    assert res.epoch == 3 and res.step == 3 * per_epoch
    assert res.metrics["best_epoch"] == 0 and res.metrics["restored_best"] is True
    best = state_of(tmp_path / "r", f"step-{per_epoch:08d}.pt")
    assert_same_tree(best["model"], state_of(tmp_path / "r")["model"], "model")
    later = state_of(tmp_path / "r", f"step-{2 * per_epoch:08d}.pt")  # training went on after the best epoch
    assert not torch.equal(later["model"]["head.weight"], best["model"]["head.weight"])


def test_transfer_learning_freezes_and_replaces_head(tmp_path, data3):
    from hpctrain.train.trainer import train

    src = train(make_cfg(data3, tmp_path / "src", run={"epochs": 1}))
    assert src.status == "completed"
    data4 = blobs_shards(tmp_path, classes=4, seed=1)
    init = tmp_path / "src" / "checkpoints" / "final.pt"
    cfg = make_cfg(data4, tmp_path / "dst", run={"epochs": 2},
                   model={"init_from": str(init), "freeze": ["features.1.weight"]},
                   optimizer={"body_lr_scale": 0.1})
    res = train(cfg)
    a, b = state_of(tmp_path / "src")["model"], state_of(tmp_path / "dst")["model"]
    assert torch.equal(a["features.1.weight"], b["features.1.weight"])  # frozen: bit-for-bit
    assert not torch.equal(a["features.1.bias"], b["features.1.bias"])  # unfrozen body trained
    assert tuple(b["head.weight"].shape) == (4, 16) and tuple(a["head.weight"].shape) == (3, 16)
    assert res.metrics["val_accuracy"] > 0.5
    groups = state_of(tmp_path / "dst")["optimizer"]["param_groups"]
    assert sorted(g["lr_scale"] for g in groups) == [0.1, 1.0]


def test_freeze_pattern_that_matches_nothing_is_an_error(tmp_path, data3):
    from hpctrain.errors import ConfigError
    from hpctrain.train.trainer import train

    train(make_cfg(data3, tmp_path / "src", run={"epochs": 1}))
    cfg = make_cfg(data3, tmp_path / "dst", model={"init_from": str(tmp_path / "src/checkpoints/final.pt"),
                                                   "freeze": ["featurse.*"]})
    with pytest.raises(ConfigError, match="model.freeze.*featurse"):
        train(cfg)


def test_outputs_metrics_and_plots(tmp_path):
    from hpctrain.data.sources import write_shards
    from hpctrain.train.trainer import train

    data = tmp_path / "digits"
    write_shards("sklearn:digits", data, shards=2, val_fraction=0.2)
    cfg = make_cfg(data, tmp_path / "r", run={"epochs": 2}, model={"kind": "cnn", "channels": [8], "dropout": 0.0},
                   logging={"plots": True}, data={"batch_size": 64})
    res = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert len(epochs[-1]["val_per_class_recall"]) == 10
    for name in ("loss.png", "lr.png", "metrics.png", "confusion.png"):
        assert (tmp_path / "r" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from hpctrain.data.shards import Manifest

    cm = np.array(res.metrics["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == Manifest.load(data).rows("val")  # every val row scored once
    resolved = json.loads((tmp_path / "r" / "config.resolved.json").read_text())
    assert resolved["versions"]["torch"] and resolved["plan"]["world_size"] == 1
    assert resolved["config"]["model"]["kind"] == "cnn"


def test_nan_input_without_imputer_is_a_clear_error(tmp_path):
    from hpctrain.data.shards import ShardWriter
    from hpctrain.errors import HpctrainError
    from hpctrain.train.trainer import train

    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    x[3, 1] = np.nan
    with ShardWriter(tmp_path / "d", feature_names=list("abcd"), sample_shape=(4,), classes=[0, 1]) as w:
        w.add(x, (np.arange(64) % 2).astype(np.int64), split="train")
    cfg = make_cfg(tmp_path / "d", tmp_path / "r", data={"val_split": None, "shuffle": False})
    with pytest.raises(HpctrainError, match="NaN.*imputation.imputer"):
        train(cfg)
    ok = train(make_cfg(tmp_path / "d", tmp_path / "r2", data={"val_split": None}, imputation={"on_nan": "zero"}))
    assert ok.status == "completed"


def test_infinite_input_is_a_clear_error_even_with_on_nan_zero(tmp_path):
    from hpctrain.data.shards import ShardWriter
    from hpctrain.errors import HpctrainError
    from hpctrain.train.trainer import train

    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    x[3, 1], x[5, 2] = np.nan, np.inf  # on_nan=zero fills the NaN; the inf is not missing data
    with ShardWriter(tmp_path / "d", feature_names=list("abcd"), sample_shape=(4,), classes=[0, 1]) as w:
        w.add(x, (np.arange(64) % 2).astype(np.int64), split="train")
    cfg = make_cfg(tmp_path / "d", tmp_path / "r", data={"val_split": None, "shuffle": False},
                   imputation={"on_nan": "zero"})
    with pytest.raises(HpctrainError, match=r"holds 1 infinite value\(s\) in this batch.*hpctrain profile"):
        train(cfg)


def test_resume_after_world_size_change_is_not_silent(tmp_path, data3, capfd):
    """A checkpoint's RNG list has one entry per rank; a different world gets a warning."""
    from hpctrain.train import checkpoint as C
    from hpctrain.train.trainer import train

    cfg = make_cfg(data3, tmp_path / "r", run={"epochs": 2})
    calls = {"n": 0}
    assert train(cfg, stop_requested=lambda: (calls.__setitem__("n", calls["n"] + 1) or calls["n"] == 5)).step == 4
    path = tmp_path / "r" / "checkpoints" / "step-00000004.pt"
    ck = C.load(path)
    ck["world_size"] = 2
    ck["rng"] = ck["rng"] * 2
    C.save_file(path, ck)
    (tmp_path / "r" / "checkpoints" / "latest").unlink()
    assert train(cfg).status == "completed"
    assert "written by 2 ranks" in capfd.readouterr().err


@pytest.mark.parametrize("kind", ["mlp", "attention"])
def test_other_models_train(tmp_path, data3, kind):
    from hpctrain.train.trainer import train

    cfg = make_cfg(data3, tmp_path / kind, run={"epochs": 4}, model={"kind": kind, "dropout": 0.0},
                   imbalance={"loss": "focal", "class_weights": "balanced"},
                   schedule={"kind": "cosine", "warmup_steps": 5}, checkpoint={"every_steps": 0})
    res = train(cfg)
    assert res.metrics["val_macro_f1"] > 0.8


_ENV_DIFF = """
import json, os, sys
from hpctrain.train.config import load_config
from hpctrain.train.trainer import train
before = dict(os.environ)
train(load_config(json.loads(sys.argv[1])))
print(json.dumps({k: [before.get(k), os.environ.get(k)] for k in sorted(set(before) | set(os.environ))
                  if before.get(k) != os.environ.get(k)}))
"""


@pytest.mark.parametrize("preset,deterministic,changed", [
    # nothing preset: only the two documented defaults appear (HDF5 locking off; cuBLAS workspace
    # for deterministic runs)
    ({}, True, {"HDF5_USE_FILE_LOCKING": [None, "FALSE"], "CUBLAS_WORKSPACE_CONFIG": [None, ":4096:8"]}),
    ({}, False, {"HDF5_USE_FILE_LOCKING": [None, "FALSE"]}),
    # the user's own settings win and are left as they are
    ({"HDF5_USE_FILE_LOCKING": "TRUE", "CUBLAS_WORKSPACE_CONFIG": ":16:8"}, True, {}),
])
def test_train_changes_the_environment_only_as_documented(tmp_path, data3, preset, deterministic, changed):
    # A fresh process: in this one, earlier tests have already set every default train() sets,
    # so a before/after comparison here could not see a change.
    import subprocess
    import sys

    cfg = {"run": {"name": "t", "dir": str(tmp_path / "r"), "epochs": 1, "seed": 5, "deterministic": deterministic},
           "data": {"dir": str(data3), "batch_size": 16, "prefetch": 0}, "model": {"kind": "mlp", "hidden": [16]},
           "logging": {"plots": False, "progress": False}, "comm": {"backend": "mpi"}}
    env = {k: v for k, v in os.environ.items() if k not in ("HDF5_USE_FILE_LOCKING", "CUBLAS_WORKSPACE_CONFIG")}
    env.update(preset)
    # torch sets this itself when its compiler stack is imported (unless the user did): not ours to report
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    out = subprocess.run([sys.executable, "-c", _ENV_DIFF, json.dumps(cfg)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == changed


def _kernels():
    """hpctrain.kernels (package_dir kernels/); if this editable install does not map it yet,
    load it from the source tree so the integration is still tested against the real code."""
    import importlib
    import importlib.util
    import sys

    try:
        return importlib.import_module("hpctrain.kernels.pipeline")
    except ImportError:
        import hpctrain

        root = Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location("hpctrain.kernels", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["hpctrain.kernels"] = mod
        spec.loader.exec_module(mod)
        hpctrain.kernels = mod
        return importlib.import_module("hpctrain.kernels.pipeline")


def test_imputation_and_augmentation_resume_exactly(tmp_path):
    _kernels()
    from hpctrain.data.sources import write_shards
    from hpctrain.kernels.impute import Imputer
    from hpctrain.train.trainer import train

    data = tmp_path / "digits"
    write_shards("sklearn:digits?missing=0.05&imbalance=4&seed=0", data, shards=3, val_fraction=0.2)
    imp = tmp_path / "imputer.json"
    Imputer("mean").fit(data).save(imp)
    ops = [{"op": "noise", "std": 0.3}, {"op": "cutout", "size": 2, "p": 0.5}]
    sections = dict(run={"epochs": 2}, model={"kind": "cnn", "channels": [8], "dropout": 0.1},
                    data={"batch_size": 32}, imputation={"imputer": str(imp)}, augmentation={"ops": ops},
                    imbalance={"class_weights": "balanced"}, checkpoint={"every_steps": 5})
    full = train(make_cfg(data, tmp_path / "full", **sections))
    assert full.metrics["val_macro_f1"] > 0.5
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 13

    cfg = make_cfg(data, tmp_path / "cut", **sections)
    assert train(cfg, stop_requested=stop).status == "interrupted"
    assert train(cfg).status == "completed"
    assert_same_tree(state_of(tmp_path / "full")["model"], state_of(tmp_path / "cut")["model"], "model")
    rng = state_of(tmp_path / "cut")["rng"][0]["augment"]
    assert rng["calls"] == full.step  # one augmentation call per batch, carried across the resume
    # Without the noise the run differs: augmentation really ran.
    plain = train(make_cfg(data, tmp_path / "plain", **{**sections, "augmentation": {"ops": []}}))
    assert not torch.equal(state_of(tmp_path / "plain")["model"]["head.weight"],
                           state_of(tmp_path / "full")["model"]["head.weight"])
    assert plain.status == "completed"


def test_oversample_sampling_balances_classes_and_trains(tmp_path):
    from hpctrain.data.shards import ShardWriter
    from hpctrain.train.data import make_train_loader
    from hpctrain.train.trainer import train

    rng = np.random.default_rng(1)
    counts = {0: 160, 1: 24, 2: 16}  # 10:1.5:1
    y = np.repeat(list(counts), list(counts.values())).astype(np.int64)
    centers = rng.normal(0, 3, size=(3, 4))
    x = (centers[y] + rng.normal(0, 1.0, size=(len(y), 4))).astype(np.float32)
    d = tmp_path / "imb"
    with ShardWriter(d, feature_names=list("abcd"), sample_shape=(4,), rows_per_shard=64, classes=[0, 1, 2]) as w:
        w.add(x, y, split="train")
        w.add(x[::4], y[::4], split="val")

    def seen(sampling):
        cfg = make_cfg(d, tmp_path / sampling, imbalance={"sampling": sampling})
        got = np.concatenate([np.asarray(b[1]) for b in make_train_loader(cfg, 0, 1, 16)])
        return np.bincount(got, minlength=3) / len(got)

    plain, over = seen("none"), seen("oversample")
    np.testing.assert_allclose(plain, [0.8, 0.12, 0.08], atol=0.03)  # the data as it is
    assert over.min() > 0.2, over  # classes about equally often (1/3 each, drawn at random)
    cfg = make_cfg(d, tmp_path / "run", run={"epochs": 2}, imbalance={"sampling": "oversample"})
    assert train(cfg).status == "completed"


def test_resume_with_a_changed_model_says_what_changed(tmp_path, data3):
    from hpctrain.errors import ConfigError
    from hpctrain.train.trainer import train

    cfg = make_cfg(data3, tmp_path / "r", run={"epochs": 2})
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 5

    assert train(cfg, stop_requested=stop).status != "completed"
    wider = make_cfg(data3, tmp_path / "r", run={"epochs": 2}, model={"hidden": [32]})
    with pytest.raises(ConfigError, match=r"cannot resume from .*step-\d+\.pt: it was written by a different model "
                                          r"\(shape: .*\(16, 6\) saved vs \(32, 6\) now.*config.resolved.json"):
        train(wider)


def test_state_mismatch_lists_shapes_and_keys():
    import torch

    from hpctrain.train.trainer import state_mismatch

    a = {"w": torch.zeros(2, 3), "b": torch.zeros(2), "old": torch.zeros(1)}
    assert state_mismatch(a, dict(a)) == ""
    got = state_mismatch(a, {"w": torch.zeros(4, 3), "b": torch.zeros(2), "new": torch.zeros(1)})
    assert got == "shape: w: (2, 3) saved vs (4, 3) now | not in the checkpoint: new | only in the checkpoint: old"
    many = state_mismatch({}, {f"k{i}": torch.zeros(1) for i in range(5)}, most=2)
    assert many == "not in the checkpoint: k0; k1 and 3 more"
