"""`hpctrain explain` end to end on small trained runs: IG completeness checked against the
model itself, permutation importance against a planted informative feature and against a
recomputation with scikit-learn's metrics, attention rows, the per-sample table, the HTML in
a real headless Chromium with every image loaded, and bad input as one-line errors."""

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("captum")

from hpctrain.cli import main  # noqa: E402

from chromium_helpers import CHROMIUM, images_loaded  # noqa: E402
INFORMATIVE = 2  # the label is the sign of feature f2; the other four are pure noise


def planted_shards(root, n_train=400, n_val=600, seed=0, names=None):
    from hpctrain.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    n = n_train + n_val
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, INFORMATIVE] > 0).astype(np.int64) * 3 + 4  # class ids 4 and 7: not 0..k-1
    with ShardWriter(root, feature_names=names or [f"f{i}" for i in range(5)], sample_shape=(5,),
                     rows_per_shard=200, classes=[4, 7]) as w:
        w.add(x[:n_train], y[:n_train])
        w.add(x[n_train:], y[n_train:], split="val")
    return root


def train_run(root, data, model, epochs=6):
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    torch.set_num_threads(1)
    cfg = load_config({
        "run": {"name": root.name, "dir": str(root), "epochs": epochs, "seed": 1},
        "data": {"dir": str(data), "batch_size": 32, "prefetch": 0},
        "model": model,
        "optimizer": {"name": "adamw", "lr": 0.01},
        "logging": {"plots": False, "progress": False},
        "comm": {"backend": "mpi"},
    })
    assert train(cfg).status == "completed"
    return root


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    base = tmp_path_factory.mktemp("explain tab")
    data = planted_shards(base / "data")
    run = train_run(base / "mlp", data, {"kind": "mlp", "hidden": [16]})
    assert main(["explain", str(run), "--out", str(base / "ex"), "--samples", "12", "--steps", "300",
                 "--repeats", "4"]) == 0
    return base, json.loads((base / "ex" / "explain.json").read_text())


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    base = tmp_path_factory.mktemp("explain att")
    data = planted_shards(base / "data")
    run = train_run(base / "att", data, {"kind": "attention", "embed_dim": 8, "heads": 2, "layers": 2}, epochs=3)
    assert main(["explain", str(run), "--out", str(base / "ex"), "--samples", "10", "--method",
                 "attention,ig", "--steps", "16"]) == 0
    return base, json.loads((base / "ex" / "explain.json").read_text())


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from hpctrain.data.sources import write_shards

    base = tmp_path_factory.mktemp("explain img")
    write_shards("sklearn:digits", base / "data", shards=2, val_fraction=0.2)
    run = train_run(base / "cnn", base / "data", {"kind": "cnn", "channels": [4, 8]}, epochs=2)
    assert main(["explain", str(run), "--out", str(base / "ex"), "--samples", "6", "--repeats", "1"]) == 0
    return base, json.loads((base / "ex" / "explain.json").read_text())


def test_ig_completeness_against_the_model(tabular):
    """sum(IG) = f(x) - f(baseline) within 1%, with f(x) and f(baseline) evaluated here directly."""
    from hpctrain.predict import load_run

    base, rec = tabular
    run = load_run(base / "mlp")
    baseline = np.array(rec["baseline"]["values"], dtype=np.float32)
    # the mean baseline is the training split's feature means (the manifest's statistics)
    from hpctrain.data.shards import iter_arrays

    train_x = np.concatenate([x for _, x, _ in iter_arrays(base / "data", "train")])
    np.testing.assert_allclose(baseline, train_x.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)
    assert len(rec["samples"]) == 12
    with torch.no_grad():
        fb = run.model(torch.from_numpy(baseline[None]))[0].numpy()
        for s in rec["samples"]:
            x = np.array(s["input"], dtype=np.float32)
            fx = run.model(torch.from_numpy(x[None]))[0].numpy()
            k = run.classes.index(s["pred"])
            assert k == int(np.argmax(fx))
            gap = float(fx[k] - fb[k])
            assert abs(sum(s["attributions"]["ig"]) - gap) <= 0.01 * abs(gap), s
            assert s["ig_relative_error"] < 0.01
    assert rec["ig_completeness"]["max_relative_error"] < 0.01


def test_zero_baseline(tabular, tmp_path):
    base, _ = tabular
    assert main(["explain", str(base / "mlp"), "--out", str(tmp_path / "z"), "--method", "ig", "--baseline", "zero",
                 "--samples", "3", "--steps", "300"]) == 0
    rec = json.loads((tmp_path / "z" / "explain.json").read_text())
    assert rec["baseline"]["values"] == [0.0] * 5 and rec["methods"] == ["ig"]
    assert rec["ig_completeness"]["max_relative_error"] < 0.01
    assert "permutation" not in rec and set(rec["mean_abs_attribution"]) == {"ig"}


def test_permutation_ranks_the_planted_feature_first(tabular):
    _, rec = tabular
    p = rec["permutation"]
    drops = {f["feature"]: f["macro_f1_drop_mean"] for f in p["features"]}
    assert max(drops, key=drops.get) == f"f{INFORMATIVE}"
    assert drops[f"f{INFORMATIVE}"] > 0.2
    assert all(abs(v) < 0.05 for k, v in drops.items() if k != f"f{INFORMATIVE}")
    assert p["repeats"] == 4 and p["rows"] == 600
    for m in ("ig", "saliency", "occlusion"):
        mean_abs = rec["mean_abs_attribution"][m]
        assert int(np.argmax(mean_abs)) == INFORMATIVE, (m, mean_abs)


def test_permutation_numbers_against_sklearn(tabular):
    """The unshuffled scores and one shuffle's drop, recomputed with scikit-learn's metrics
    from the same permutation stream (repeat, then feature)."""
    from sklearn.metrics import accuracy_score, f1_score

    from hpctrain.data.shards import iter_arrays
    from hpctrain.explain.permutation import permutations
    from hpctrain.predict import load_run

    base, rec = tabular
    run = load_run(base / "mlp")
    x = np.concatenate([a for _, a, _ in iter_arrays(base / "data", "val")])
    y = np.concatenate([b for _, _, b in iter_arrays(base / "data", "val")])
    p = rec["permutation"]
    pred = run.predict(x)
    assert p["base"]["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert p["base"]["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    result = json.loads((base / "mlp" / "result.json").read_text())
    assert p["base"]["accuracy"] == pytest.approx(result["metrics"]["val_accuracy"], abs=1e-12)
    for r, j, perm in permutations(len(x), 5, p["repeats"], rec["settings"]["seed"]):
        if (r, j) in ((0, INFORMATIVE), (3, 1)):
            xs = x.copy()
            xs[:, j] = x[perm, j]
            ps = run.predict(xs)
            f = p["features"][j]
            assert f["accuracy_drops"][r] == pytest.approx(accuracy_score(y, pred) - accuracy_score(y, ps), abs=1e-12)
            assert f["macro_f1_drops"][r] == pytest.approx(
                f1_score(y, pred, average="macro") - f1_score(y, ps, average="macro"), abs=1e-12)
    f = p["features"][INFORMATIVE]
    assert f["macro_f1_drop_mean"] == pytest.approx(np.mean(f["macro_f1_drops"]))
    assert f["macro_f1_drop_std"] == pytest.approx(np.std(f["macro_f1_drops"]))


def test_tabular_outputs_and_sample_table(tabular):
    base, rec = tabular
    out = base / "ex"
    assert set(rec["images"]) == {"permutation", "attribution_ig", "attribution_saliency", "attribution_occlusion"}
    for name in rec["images"]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = rec["samples"][0]
    assert {len(v) for v in s["attributions"].values()} == {5} and len(s["input"]) == 5
    assert s["label"] in (4, 7) and s["pred"] in (4, 7) and 0.5 <= s["prob"] <= 1.0
    page = (out / "explain.html").read_text()
    assert page.count("<h3>row ") == 12 and "<th>ig</th>" in page and "<th>occlusion</th>" in page
    assert "http://" not in page and "https://" not in page
    assert len(re.findall(r'<img[^>]* src="data:image/png;base64,', page)) == 4


def test_attention_rows_sum_to_one(attention):
    base, rec = attention
    a = rec["attention"]
    assert a["layers"] == 2 and a["heads"] == 2 and a["tokens"] == ["[CLS]"] + [f"f{i}" for i in range(5)]
    per = np.array(a["per_sample"])
    assert per.shape == (10, 2, 2, 6, 6)
    assert (per >= 0).all()
    np.testing.assert_allclose(per.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.array(a["mean"]).sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.array(a["mean"]), per.mean(axis=0), atol=1e-12)
    # the model's own reading of the same weights: last layer, [CLS] row, averaged over heads
    from hpctrain.predict import load_run

    run = load_run(base / "att")
    x = torch.tensor([s["input"] for s in rec["samples"]], dtype=torch.float32)
    np.testing.assert_allclose(run.model.feature_attention(x).numpy(), per[:, -1, :, 0, 1:].mean(axis=1), atol=1e-6)
    assert rec["methods"] == ["ig", "attention"] and "attention" in rec["images"]


def test_image_outputs(digits):
    base, rec = digits
    assert rec["model"]["image"] and rec["model"]["sample_shape"] == [1, 8, 8]
    assert {"samples", "attribution_maps", "permutation"} <= set(rec["images"])
    assert len(rec["permutation"]["features"]) == 64 and len(rec["samples"]) == 6
    assert rec["settings"]["occlusion_window"] == [1, 1, 1]
    assert all(len(s["attributions"]["ig"]) == 64 for s in rec["samples"])
    page = (base / "ex" / "explain.html").read_text()
    assert 'alt="samples with saliency and IG"' in page and 'alt="mean |attribution| per pixel"' in page
    assert "<h3>row " not in page  # images get the picture grid, not the tables


_render = images_loaded


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_pages_render_in_headless_chromium_with_every_image(tabular, attention, digits, tmp_path):
    for (base, rec), sub in ((tabular, "tab"), (attention, "att"), (digits, "img")):
        page = base / "ex" / "explain.html"
        n = len(rec["images"])
        assert n >= 2
        assert _render(page, tmp_path / sub) == f"{n}/{n}"
    # negative control: an image that does not decode is noticed
    text = (digits[0] / "ex" / "explain.html").read_text()
    broken = re.sub(r"data:image/png;base64,[^\"]+", "data:image/png;base64,AAAA", text, count=1)
    (tmp_path / "broken.html").write_text(broken)
    n = len(digits[1]["images"])
    assert _render(tmp_path / "broken.html", tmp_path / "b") == f"{n - 1}/{n}"


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hpctrain explain: error: ")
    for n in needles:
        assert n in err, err


def test_bad_input_is_one_line(tabular, tmp_path, capsys):
    from hpctrain.data.shards import ShardWriter

    base, _ = tabular
    run = str(base / "mlp")
    out = str(tmp_path / "o")
    _one_line_error(capsys, ["explain", str(tmp_path / "nope"), "--out", out], "does not exist")
    _one_line_error(capsys, ["explain", run, "--out", out, "--method", "ig,shap"], "unknown method", "'shap'")
    _one_line_error(capsys, ["explain", run, "--out", out, "--samples", "0"], "--samples: got 0")
    _one_line_error(capsys, ["explain", run, "--out", out, "--split", "test"], "--split")
    _one_line_error(capsys, ["explain", run, "--out", out, "--baseline", "median"], "--baseline")
    _one_line_error(capsys, ["explain", run, "--out", out, "--method", "attention"], "records no attention")
    _one_line_error(capsys, ["explain", run, "--out", str(base / "mlp" / "ex")], "inside the run")
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["explain", run, "--out", str(tmp_path / "file")], "is a file")
    only_train = tmp_path / "train only"
    with ShardWriter(only_train, feature_names=[f"f{i}" for i in range(5)], sample_shape=(5,), classes=[4, 7]) as w:
        w.add(np.zeros((20, 5), dtype=np.float32), np.full(20, 4, dtype=np.int64))
    _one_line_error(capsys, ["explain", run, "--out", out, "--shards", str(only_train)], "no rows in split 'val'",
                    "--split train")
    wrong = tmp_path / "wrong shape"
    with ShardWriter(wrong, feature_names=["a", "b"], sample_shape=(2,)) as w:
        w.add(np.zeros((20, 2), dtype=np.float32), np.zeros(20, dtype=np.int64), split="val")
    _one_line_error(capsys, ["explain", run, "--out", out, "--shards", str(wrong)], "sample shape (2,)")
    _one_line_error(capsys, ["explain", run, "--out", out, "--shards", str(tmp_path / "none")], "--shards")
    assert not (tmp_path / "o").exists()


def test_train_split_and_artifact(tabular, tmp_path):
    """--split train works, and a model artifact explains to the same numbers as its run."""
    pytest.importorskip("safetensors")
    base, _ = tabular
    assert main(["export", str(base / "mlp"), "--out", str(tmp_path / "model")]) == 0
    argv = ["--split", "train", "--samples", "4", "--method", "ig,occlusion", "--shards", str(base / "data")]
    assert main(["explain", str(base / "mlp"), "--out", str(tmp_path / "a"), *argv]) == 0
    assert main(["explain", str(tmp_path / "model"), "--out", str(tmp_path / "b"), *argv]) == 0
    a, b = (json.loads((tmp_path / d / "explain.json").read_text()) for d in "ab")
    assert a["split"] == "train" and a["rows"] == 400
    assert a["samples"] == b["samples"]


def test_hostile_feature_names_and_paths(tmp_path):
    """Feature names with TeX dollars or HTML, and paths with spaces and markup: the plots
    render (matplotlib would parse $...$ as TeX) and the page escapes everything."""
    base = tmp_path / "a b'c\"<i>d</i>"
    names = ["cost ($)", r"$\frac$", "<script>alert(1)</script>", 'q"uote', "e"]
    data = planted_shards(base / "data", n_train=200, n_val=100, names=names)
    run = train_run(base / "run", data, {"kind": "mlp", "hidden": [8]}, epochs=1)
    assert main(["explain", str(run), "--out", str(base / "ex <b>"), "--samples", "2", "--repeats", "1"]) == 0
    page = (base / "ex <b>" / "explain.html").read_text()
    assert "<script>alert" not in page and "<i>d</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;d&lt;/i&gt;" in page
    rec = json.loads((base / "ex <b>" / "explain.json").read_text())
    assert rec["feature_names"] == names and len(rec["images"]) == 4


def test_regression_model(tmp_path):
    """A regression run: the first output is explained, permutation importance is the R^2 drop
    and the MSE increase (checked against scikit-learn), and the planted feature leads."""
    from sklearn.metrics import mean_squared_error, r2_score

    from hpctrain.data.shards import ShardWriter, iter_arrays
    from hpctrain.predict import load_run

    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 5)).astype(np.float32)
    y = (3.0 * x[:, INFORMATIVE] + 0.1 * rng.normal(size=700)).astype(np.float32)
    with ShardWriter(tmp_path / "data", feature_names=[f"f{i}" for i in range(5)], sample_shape=(5,),
                     targets=1) as w:
        w.add(x[:500], y[:500])
        w.add(x[500:], y[500:], split="val")
    run = train_run(tmp_path / "reg", tmp_path / "data", {"kind": "mlp", "hidden": [16]}, epochs=8)
    assert main(["explain", str(run), "--out", str(tmp_path / "ex"), "--samples", "5", "--steps", "300",
                 "--repeats", "2"]) == 0
    rec = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert rec["task"] == "regression" and rec["target"] == "the first regression output"
    p = rec["permutation"]
    assert p["primary"] == "r2_drop" and p["rows"] == 200
    drops = [f["r2_drop_mean"] for f in p["features"]]
    assert int(np.argmax(drops)) == INFORMATIVE and drops[INFORMATIVE] > 0.5
    assert int(np.argmax([f["mse_increase_mean"] for f in p["features"]])) == INFORMATIVE
    xv = np.concatenate([a for _, a, _ in iter_arrays(tmp_path / "data", "val")])
    yv = np.concatenate([b for _, _, b in iter_arrays(tmp_path / "data", "val")])
    yv, pred = yv.astype(np.float64), load_run(run).predict(xv).astype(np.float64)  # sklearn would sum in float32
    assert p["base"]["r2"] == pytest.approx(r2_score(yv, pred), abs=1e-9)
    assert p["base"]["mse"] == pytest.approx(mean_squared_error(yv, pred), rel=1e-9)
    s = rec["samples"][0]
    assert "prob" not in s and isinstance(s["pred"], float) and s["target_index"] == 0
    assert rec["ig_completeness"]["max_relative_error"] < 0.01
    assert int(np.argmax(rec["mean_abs_attribution"]["ig"])) == INFORMATIVE
    page = (tmp_path / "ex" / "explain.html").read_text()
    assert "R^2 drop" in page and "MSE increase" in page and "(p=" not in page
