"""hpctrain export: the artifact (safetensors + JSON) predicts exactly what the run predicts,
'hpctrain predict' takes it like a run dir, and a tampered weight file is refused by name."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from hpctrain.cli import main  # noqa: E402
from hpctrain.predict import load_run  # noqa: E402
from hpctrain.serve.artifact import ArtifactError, load_artifact  # noqa: E402
from serve_helpers import train_tiny_run, val_rows  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = train_tiny_run(root)
    assert main(["export", str(run), "--out", str(root / "model")]) == 0
    return root


def test_artifact_predicts_bit_for_bit_like_the_run(exported):
    x, _ = val_rows(exported)
    assert np.isnan(x).any()  # the imputer statistics must travel with the model
    run, art = load_run(exported / "run"), load_run(exported / "model")
    a, b = run.logits(x), art.logits(x)
    assert a.dtype == np.float32 and a.tobytes() == b.tobytes()
    np.testing.assert_array_equal(run.predict(x), art.predict(x))


def test_manifest_holds_schema_metrics_and_provenance(exported):
    m = json.loads((exported / "model" / "artifact.json").read_text())
    result = json.loads((exported / "run" / "result.json").read_text())
    assert m["classes"] == [2, 5, 9] and m["class_names"] == ["two", "five", "nine"]
    assert m["input_schema"]["feature_names"] == ["f0", "f1", "f2", "f3"]
    assert m["input_schema"]["missing"] == "imputed" and m["imputer"]["n_features"] == 4
    assert m["metrics"]["val_macro_f1"] == result["metrics"]["val_macro_f1"]
    prov = m["provenance"]
    assert prov["run_dir"] == str((exported / "run").resolve()) and prov["step"] == result["step"]
    assert prov["exported_with"]["torch"] and prov["exported_with"]["safetensors"]
    assert "git_revision" in prov["training"]
    assert not list((exported / "model").glob("*.pt")) and not list((exported / "model").glob("*.pkl"))


def test_cli_predict_accepts_the_artifact(exported):
    a, b = exported / "a.npz", exported / "b.npz"
    assert main(["predict", str(exported / "run"), str(exported / "data"), "--out", str(a)]) == 0
    assert main(["predict", str(exported / "model"), str(exported / "data"), "--out", str(b)]) == 0
    za, zb = np.load(a), np.load(b)
    assert za["proba"].tobytes() == zb["proba"].tobytes()


def test_tampered_weights_are_refused_by_name(exported, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported / "model", bad)
    w = next(bad.glob("model-*.safetensors"))
    raw = bytearray(w.read_bytes())
    raw[-3] ^= 0x40  # one bit of one weight: safetensors itself would load it silently
    w.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=f"{w.name}.*changed or corrupted"):
        load_artifact(bad)
    w.write_bytes(b"{not safetensors")
    with pytest.raises(ArtifactError, match=w.name):
        load_artifact(bad)


def test_export_refuses_to_overwrite_without_force(exported, capsys):
    out = exported / "model"
    before = json.loads((out / "artifact.json").read_text())["weights"]["file"]
    assert main(["export", str(exported / "run"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(exported / "run"), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["artifact.json", before])
    assert main(["export", str(exported / "data"), "--out", str(exported / "x")]) == 2
    assert "result.json" in capsys.readouterr().err
