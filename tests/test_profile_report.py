"""`hpctrain profile` end to end: report.json against numpy/pandas, the PNGs, the self-contained
HTML rendered by a real headless Chromium with every image loaded, and bad input."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from hpctrain.cli import main

from chromium_helpers import CHROMIUM, images_loaded  # noqa: E402
PNGS = ["histograms", "missingness", "class_balance", "correlation", "anomaly_scores"]


def _planted(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    x[:, 1] = 2.0                                  # constant column
    x[rng.random(n) < 0.3, 2] = np.nan             # 30% missing
    x[:40, 3] = 25.0                               # outliers
    y = np.where(rng.random(n) < 0.05, 1, 0).astype(np.int64)
    x[n - 30:] = x[100:130]                        # 30 duplicate rows (2%)
    y[n - 30:] = y[100:130]
    return x, y


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    from hpctrain.data.shards import ShardWriter

    root = tmp_path_factory.mktemp("prof")
    x, y = _planted()
    with ShardWriter(root / "shards", feature_names=list("abcde"), sample_shape=(5,), rows_per_shard=400) as w:
        w.add(x[:1300], y[:1300])
        w.add(x[1300:], y[1300:], split="val")
    assert main(["profile", str(root / "shards"), "--out", str(root / "report")]) == 0
    return root, x, y


def test_report_json_matches_pandas(profiled, capsys):
    root, x, y = profiled
    r = json.loads((root / "report" / "report.json").read_text())
    df = pd.DataFrame(x.astype(np.float64))
    assert r["rows"] == len(x) and r["feature_names"] == list("abcde")
    for j, c in enumerate(r["columns"]):
        assert c["count"] == df[j].count()
        assert c["missing_pct"] == pytest.approx(100 * df[j].isna().mean())
        assert c["mean"] == pytest.approx(df[j].mean(), rel=1e-12)
        if df[j].count() > 1:
            assert c["std"] == pytest.approx(df[j].std(), rel=1e-9)
        assert c["quantiles"]["0.5"] == df[j].median()
        assert c["quantiles"]["0.25"] == df[j].quantile(0.25) and c["quantiles"]["0.99"] == df[j].quantile(0.99)
        assert c["min"] == df[j].min() and c["max"] == df[j].max()
        assert sum(c["histogram"]["counts"]) == df[j].count()
    assert r["columns"][3]["outliers_iqr"] >= 40
    assert r["duplicates"]["rows"] == int(pd.DataFrame(x).assign(y=y).duplicated().sum()) == 30
    assert r["classes"]["counts"] == {"0": int((y == 0).sum()), "1": int((y == 1).sum())}
    kinds = {(w["kind"], w.get("column")) for w in r["warnings"]}
    assert {("constant", "b"), ("missing", "c"), ("imbalance", None), ("duplicates", None)} <= kinds
    full = df.dropna()
    np.testing.assert_allclose(np.array(r["correlation"]["matrix"], dtype=float)[np.ix_([0, 2, 3], [0, 2, 3])],
                               np.corrcoef(full[[0, 2, 3]].to_numpy(), rowvar=False), atol=1e-12)
    assert r["anomalies"]["top"][0]["shard"].endswith(".h5")


def test_pngs_and_self_contained_html(profiled):
    root, _, _ = profiled
    for name in PNGS:
        assert (root / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (root / "report" / "report.html").read_text()
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(srcs) == len(PNGS)
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "http://" not in page and "https://" not in page


_render = images_loaded


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_with_all_images(profiled, tmp_path):
    root, _, _ = profiled
    assert _render(root / "report" / "report.html", tmp_path) == f"{len(PNGS)}/{len(PNGS)}"
    # negative control: the check does notice an image that fails to decode
    page = (root / "report" / "report.html").read_text()
    broken = re.sub(r"data:image/png;base64,[^\"]+", "data:image/png;base64,AAAA", page, count=1)
    (tmp_path / "broken.html").write_text(broken)
    assert _render(tmp_path / "broken.html", tmp_path) == f"{len(PNGS) - 1}/{len(PNGS)}"


def test_profile_bad_input(tmp_path, capsys):
    from hpctrain.data.shards import ShardWriter

    assert main(["profile", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    d = tmp_path / "d"
    with ShardWriter(d, feature_names=["a", "b"], sample_shape=(2,)) as w:
        w.add(np.zeros((10, 2), dtype=np.float32), np.zeros(10, dtype=np.int64))
    assert main(["profile", str(d), "--split", "val", "--out", str(tmp_path / "r")]) == 2
    assert "no rows in split 'val'" in capsys.readouterr().err
    assert main(["profile", str(d), "--out", str(d / "report")]) == 2
    assert "never modify their input" in capsys.readouterr().err
    assert not (d / "report").exists()
    m = json.loads((d / "manifest.json").read_text())
    m["shards"] = []
    (d / "manifest.json").write_text(json.dumps(m))
    assert main(["profile", str(d), "--out", str(tmp_path / "r")]) == 2
    assert "lists no shards" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_terminal_summary_and_warning_rules(profiled, capsys):
    root, _, _ = profiled
    r = json.loads((root / "report" / "report.json").read_text())
    rules = {w["kind"]: w["rule"] for w in r["warnings"]}
    assert rules["missing"] == "missing > 20%" and rules["imbalance"] == "imbalance ratio > 10"
    assert rules["duplicates"] == "duplicate rows > 1%" and rules["constant"] == "min == max"
    assert main(["profile", str(root / "shards"), "--out", str(root / "again")]) == 0
    out = capsys.readouterr().out
    assert "rows 1500, features 5" in out
    assert "WARNING [missing] 1 column(s) (rule: missing > 20%): c" in out
    assert "(rule: imbalance ratio > 10)" in out
    assert out.strip().splitlines()[-1].startswith(f"report: {root / 'again' / 'report.html'}")
    page = (root / "report" / "report.html").read_text()
    assert "<h2>Summary</h2>" in page and "missing &gt; 20%" in page


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Column names with TeX-like dollars or HTML, and directories with spaces, quotes and markup."""
    from hpctrain.data.shards import ShardWriter

    names = ["cost ($)", r"$\frac$", "<script>alert(1)</script>", 'q"uote']
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("hostile") / "a b'c\"<i>d</i>"
    for sub, shift in (("ref", 0.0), ("cur", 1.0)):
        x = rng.normal(shift, size=(300, 4)).astype(np.float32)
        with ShardWriter(base / sub, feature_names=names, sample_shape=(4,)) as w:
            w.add(x, (rng.random(300) < 0.5).astype(np.int64))
    assert main(["profile", str(base / "ref"), "--out", str(base / "prof <b>")]) == 0
    assert main(["drift", str(base / "ref"), str(base / "cur"), "--out", str(base / "drift <b>")]) == 3
    return base


def test_hostile_names_and_paths(hostile):
    """The plots render (matplotlib would parse $...$ as TeX and fail) and the pages escape everything."""
    base = hostile
    for page in (base / "prof <b>" / "report.html", base / "drift <b>" / "drift.html"):
        text = page.read_text()
        assert "<script>alert" not in text and "<i>d</i>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;i&gt;d&lt;/i&gt;" in text
    assert (base / "drift <b>" / "drift.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_drift_page_and_hostile_paths_render_in_chromium(hostile, tmp_path):
    assert _render(hostile / "drift <b>" / "drift.html", tmp_path) == "1/1"
    assert _render(hostile / "prof <b>" / "report.html", tmp_path) == f"{len(PNGS)}/{len(PNGS)}"


def test_profile_bins_and_seed_bounded(tmp_path, capsys):
    from hpctrain.data.shards import ShardWriter

    d = tmp_path / "d"
    with ShardWriter(d, feature_names=["a", "b"], sample_shape=(2,)) as w:
        w.add(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.int64) % 2)
    # a billion bins was a numpy _ArrayMemoryError (477 GiB), seed -1 an sklearn InvalidParameterError;
    # the CLI is given just one bin too many, so that a regression costs nothing (2 features x 1e9 bins
    # went to the OOM killer); ProfileConfig below takes the billion
    for opts, want in ((["--bins", "1001"], "--bins 1001: at most 1000 histogram bins"),
                       (["--seed", "-1"], "--seed -1: expected an integer from 0 to 4294967295"),
                       (["--seed", str(2**32)], f"--seed {2**32}: expected an integer")):
        assert main(["profile", str(d), "--out", str(tmp_path / "r"), *opts]) == 2
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()
    from hpctrain.quality import QualityError
    from hpctrain.quality.profile import MAX_BINS, ProfileConfig

    with pytest.raises(QualityError, match="--bins 1000000000: at most 1000"):
        ProfileConfig(bins=10**9)
    assert ProfileConfig(bins=MAX_BINS, seed=2**32 - 1).bins == MAX_BINS
    assert main(["profile", str(d), "--out", str(tmp_path / "r"), "--bins", "1000", "--seed", str(2**32 - 1)]) == 0
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert sum(r["columns"][0]["histogram"]["counts"]) == 10 and len(r["columns"][0]["histogram"]["counts"]) == 1000
