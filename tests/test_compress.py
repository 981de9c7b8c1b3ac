"""hpctrain compress: the int8 artifact (static for the CNN, dynamic for the MLP) is smaller,
loads through the same path as any artifact and scores what the report says; a destructive
prune is refused by the macro-F1 guard and writes nothing."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from hpctrain.cli import main  # noqa: E402
from hpctrain.predict import load_run  # noqa: E402
from hpctrain.serve.compress import CompressError, compress_run  # noqa: E402
from serve_helpers import train_tiny_run, val_rows  # noqa: E402


def accuracy(path, root):
    x, y = val_rows(root)
    return float((load_run(path).predict(x) == y).mean())


@pytest.mark.parametrize("kind,model,method", [
    ("cnn", {"kind": "cnn", "channels": [16, 32]}, "static"),
    ("mlp", {"kind": "mlp", "hidden": [64, 64]}, "dynamic"),
])
def test_compressed_artifact_is_smaller_and_predicts(tmp_path, capsys, kind, model, method):
    run = train_tiny_run(tmp_path, kind=kind, model=model, epochs=3)
    out = tmp_path / "small"
    assert main(["compress", str(run), "--out", str(out), "--max-drop", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert f"quantize {method}" in printed and "val macro F1" in printed
    m = json.loads((out / "artifact.json").read_text())
    rep = m["compression"]["report"]
    assert rep["after"]["bytes"] < rep["before"]["bytes"]
    assert (out / m["weights"]["file"]).stat().st_size == m["weights"]["bytes"] < rep["before"]["bytes"]
    assert rep["before"]["latency_ms_batch1"] > 0 and rep["after"]["latency_ms_batch64"] > 0
    # the reloaded artifact is the model that was measured
    assert accuracy(out, tmp_path) == rep["after"]["accuracy"]
    assert accuracy(run, tmp_path) == rep["before"]["accuracy"]
    assert m["classes"] == [2, 5, 9] and m["imputer"] is not None
    x, _ = val_rows(tmp_path)
    probs = load_run(out).predict_proba(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_destructive_prune_is_refused_by_the_guard(tmp_path, capsys):
    run = train_tiny_run(tmp_path, model={"kind": "mlp", "hidden": [32]}, epochs=3)
    with pytest.raises(CompressError, match=r"macro F1 dropped by 0\.\d+ .* than --max-drop 0.01; nothing written"):
        compress_run(run, tmp_path / "gone", prune=0.99, quantize="none")
    assert not (tmp_path / "gone").exists()
    assert main(["compress", str(run), "--out", str(tmp_path / "gone"), "--prune", "0.99"]) == 2
    assert "dropped by" in capsys.readouterr().err


def test_pruning_is_permanent_and_stored_sparse(tmp_path):
    run = train_tiny_run(tmp_path, model={"kind": "mlp", "hidden": [64, 64]}, epochs=3)
    rep = compress_run(run, tmp_path / "p", prune=0.7, quantize="none", max_drop=1.0)
    assert rep["after"]["nonzero_params"] <= 0.35 * rep["before"]["params"]
    m = json.loads((tmp_path / "p" / "artifact.json").read_text())
    layouts = [e["data"]["layout"] for e in m["compression"]["entries"].values() if "data" in e]
    assert "sparse" in layouts and rep["after"]["bytes"] < rep["before"]["bytes"]
    assert accuracy(tmp_path / "p", tmp_path) == rep["after"]["accuracy"]


def test_bad_arguments(tmp_path):
    with pytest.raises(CompressError, match="--prune 1.5"):
        compress_run(tmp_path, tmp_path / "o", prune=1.5)
    with pytest.raises(CompressError, match="--quantize 'int4'"):
        compress_run(tmp_path, tmp_path / "o", quantize="int4")
