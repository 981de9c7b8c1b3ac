"""hpctrain predict / the farm's batch_inference: a finished run's predictions on its own
validation split reproduce the accuracy the trainer recorded, and agree with the model
evaluated directly through torch."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpctrain.cli import main  # noqa: E402
from hpctrain.predict import PredictError, load_run  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from hpctrain.data.shards import ShardWriter
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 4))
    classes = [2, 5, 9]  # label ids that are not 0..k-1: predictions must map back to them
    with ShardWriter(root / "data", feature_names=[f"f{i}" for i in range(4)], sample_shape=(4,),
                     rows_per_shard=50, classes=classes) as w:
        for split, n in (("train", 200), ("val", 60)):
            idx = rng.integers(0, 3, n)
            x = (centers[idx] + rng.normal(0, 1.0, size=(n, 4))).astype(np.float32)
            w.add(x, np.asarray(classes)[idx], split=split)
    cfg = load_config({
        "run": {"name": "p", "dir": str(root / "run"), "epochs": 2, "seed": 1},
        "data": {"dir": str(root / "data"), "batch_size": 16, "prefetch": 0},
        "model": {"kind": "mlp", "hidden": [8]},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "logging": {"plots": False, "progress": False},
        "comm": {"backend": "mpi"},
    })
    assert train(cfg).status == "completed"
    return root


def test_cli_predictions_reproduce_the_recorded_val_accuracy(trained, capsys):
    out = trained / "pred.npz"
    assert main(["predict", str(trained / "run"), str(trained / "data"), "--split", "val", "--out", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    z = np.load(out)
    result = json.loads((trained / "run" / "result.json").read_text())
    assert len(z["label"]) == 60 and set(np.unique(z["pred"])) <= {2, 5, 9}
    assert (z["label"] == z["pred"]).mean() == pytest.approx(result["metrics"]["val_accuracy"], abs=1e-12)
    np.testing.assert_allclose(z["proba"].sum(axis=1), 1.0, rtol=1e-5)
    assert list(z["classes"]) == [2, 5, 9]


def test_predict_equals_the_model_run_directly(trained):
    from hpctrain.data.shards import iter_arrays

    run = load_run(trained / "run")
    _, x, _ = next(iter(iter_arrays(trained / "data", "val")))
    with torch.no_grad():
        direct = run.model(torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(run.predict(x), np.asarray([2, 5, 9])[direct])
    assert run.model.training is False


def test_farm_batch_inference_task(trained):
    from hpctrain.farm.builtin import batch_inference

    s = batch_inference(str(trained / "run"), str(trained / "data"), str(trained / "all.npz"))
    assert s["rows"] == 260 and np.load(trained / "all.npz")["pred"].shape == (260,)


def test_bad_inputs(trained, tmp_path, capsys):
    with pytest.raises(PredictError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    with pytest.raises(PredictError, match="no result.json"):
        load_run(tmp_path / "r")
    rc = main(["predict", str(trained / "run"), str(trained / "data"), "--out", str(tmp_path / "p.csv")])
    assert rc == 2 and ".npz" in capsys.readouterr().err
    with pytest.raises(PredictError, match="does not hold samples"):
        load_run(trained / "run").predict(np.zeros((2, 3), np.float32))


def test_bad_python_inputs(trained, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PredictError, match="is a file, not a directory"):
        load_run(tmp_path / "f")
    for name, body in (("list", b"[1, 2]"), ("binary", b"\xff\xfe")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_bytes(body)
        with pytest.raises(PredictError, match="not the JSON object|unreadable"):
            load_run(tmp_path / name)
    run = load_run(trained / "run")
    per = int(np.prod(run.sample_shape))
    with pytest.raises(PredictError, match="does not hold samples"):
        run.predict(np.zeros((2, per // 2), np.float32))  # used to be merged into one sample
    with pytest.raises(PredictError, match="dtype object"):
        run.predict(np.zeros((1, per), dtype=object))
    with pytest.raises(PredictError, match="beyond the float32 range"):
        run.predict(np.full((1, per), 1e300))
    assert run.predict(np.zeros((3, per))).shape == (3,)
