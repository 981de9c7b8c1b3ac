"""Model-level drift: a finished run scored on its own validation split reproduces result.json
(no drift); scored on shifted labelled shards it degrades past the tolerance (exit 3)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpctrain.cli import main  # noqa: E402


def _blobs(path, centers, n_train, n_val, seed, shift=0.0):
    from hpctrain.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    with ShardWriter(path, feature_names=[f"f{i}" for i in range(centers.shape[1])],
                     sample_shape=(centers.shape[1],), rows_per_shard=64, classes=[0, 1, 2]) as w:
        for split, n in (("train", n_train), ("val", n_val)):
            if n == 0:
                continue
            y = rng.integers(0, 3, n)
            x = (centers[y] + shift + rng.normal(0, 1.0, size=(n, centers.shape[1]))).astype(np.float32)
            w.add(x, y.astype(np.int64), split=split)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mdrift")
    centers = np.random.default_rng(0).normal(0, 3, size=(3, 5))
    data = _blobs(root / "data", centers, 240, 90, seed=1)
    cfg = load_config({
        "run": {"name": "m", "dir": str(root / "run"), "epochs": 3, "seed": 3},
        "data": {"dir": str(data), "batch_size": 16, "prefetch": 0},
        "model": {"kind": "mlp", "hidden": [16]},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "logging": {"plots": False, "progress": False},
        "comm": {"backend": "mpi"},
    })
    res = train(cfg)
    assert res.status == "completed"
    return root, data, centers


def test_own_validation_split_reproduces_result(trained, capsys):
    root, data, _ = trained
    result = json.loads((root / "run" / "result.json").read_text())
    out = root / "d-own"
    rc = main(["drift", "--model", str(root / "run"), str(data), "--cur-split", "val", "--out", str(out),
               "--tolerance", "0"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "drift.json").read_text())
    assert rec["current_value"] == pytest.approx(result["metrics"]["val_accuracy"], abs=1e-12)
    assert rec["current_metrics"]["loss"] == pytest.approx(result["metrics"]["val_loss"], rel=1e-5)
    assert rec["drift"] is False and rec["cur_rows"] == 90


def test_shifted_data_degrades_and_exits_3(trained, capsys):
    root, _, centers = trained
    shifted = _blobs(root / "shifted", centers, 200, 0, seed=7, shift=4.0)
    out = root / "d-shift"
    rc = main(["drift", "--model", str(root / "run"), str(shifted), "--out", str(out)])
    assert rc == 3
    rec = json.loads((out / "drift.json").read_text())
    assert rec["drift"] is True and rec["degradation"] > 0.02
    assert "DRIFT" in capsys.readouterr().out
    # a generous tolerance accepts it; loss as the metric (lower is better) sees it too
    assert main(["drift", "--model", str(root / "run"), str(shifted), "--out", str(out), "--tolerance", "1"]) == 0
    assert main(["drift", "--model", str(root / "run"), str(shifted), "--out", str(out),
                 "--metric", "val_loss"]) == 3


def test_model_drift_bad_input(trained, tmp_path, capsys):
    root, data, _ = trained
    assert main(["drift", "--model", str(tmp_path), str(data), "--out", str(tmp_path / "o")]) == 2
    assert "no result.json" in capsys.readouterr().err
    assert main(["drift", "--model", str(root / "run"), str(data), "--metric", "auc", "--out", str(tmp_path)]) == 2
    assert "expected one of" in capsys.readouterr().err
    from hpctrain.data.shards import ShardWriter

    wide = tmp_path / "wide"
    with ShardWriter(wide, feature_names=None, sample_shape=(7,)) as w:
        w.add(np.zeros((5, 7), dtype=np.float32), np.zeros(5, dtype=np.int64))
    assert main(["drift", "--model", str(root / "run"), str(wide), "--out", str(tmp_path / "o")]) == 2
    assert "sample shape" in capsys.readouterr().err


def test_tolerance_must_be_finite(tmp_path, capsys):
    # --tolerance nan never compared and then failed writing drift.json ("Out of range float values")
    data = _blobs(tmp_path / "cur", np.eye(3), 30, 0, seed=0)
    for tol in ("nan", "inf", "-1.0"):
        assert main(["drift", "--model", str(tmp_path / "no-run"), str(data), "--tolerance", tol,
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"--tolerance {tol}: expected a finite, non-negative metric difference" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()
