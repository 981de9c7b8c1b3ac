"""Drift: KS/Bonferroni against scipy, PSI against hand-computed values, the CLI's exit codes."""

import json
import math
import sys

import numpy as np
import pytest
from scipy.stats import ks_2samp

from hpctrain.cli import main
from hpctrain.quality.drift import bin_shares, feature_drift, psi, psi_edges, psi_level


def _shards(path, x, y, names=None, split="train"):
    from hpctrain.data.shards import ShardWriter

    names = names or [f"f{j}" for j in range(x.shape[1])]
    with ShardWriter(path, feature_names=names, sample_shape=x.shape[1:], rows_per_shard=400) as w:
        w.add(x, y, split=split)
    return path


def _normal(n, f, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    x[:, 0] += shift
    return x, (rng.random(n) < 0.3).astype(np.int64)


def test_ks_equals_scipy_with_bonferroni():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=500), rng.normal(size=500), rng.normal(size=500)]
    cur = [rng.normal(0.3, size=400), rng.normal(size=400), np.append(rng.normal(size=399), np.nan)]
    res = feature_drift(["a", "b", "c"], ref, cur, alpha=0.05)
    for r, a, b in zip(res, ref, cur):
        want = ks_2samp(a[np.isfinite(a)], b[np.isfinite(b)])
        assert r.ks_stat == want.statistic and r.ks_pvalue == want.pvalue
        assert r.ks_drift == (want.pvalue < 0.05 / 3)
    assert res[0].ks_drift and not res[1].ks_drift
    assert res[2].cur_count == 399


def test_bonferroni_changes_the_verdict():
    # one p-value between alpha/m and alpha: significant alone, not after the correction
    rng = np.random.default_rng(11)
    for _ in range(200):
        a, b = rng.normal(size=200), rng.normal(0.2, size=200)
        p = ks_2samp(a, b).pvalue
        if 0.05 / 10 < p < 0.05:
            break
    else:
        pytest.fail("no example found")
    names = [f"f{i}" for i in range(10)]
    res = feature_drift(names, [a] * 10, [b] * 10, alpha=0.05)
    assert not any(r.ks_drift for r in res)
    assert feature_drift(["f0"], [a], [b], alpha=0.05)[0].ks_drift


def test_psi_hand_computed():
    ref = np.arange(10.0)                     # median 4.5 splits it 5 / 5
    cur = np.array([0, 0, 1, 1, 2, 2, 3, 3, 8, 9.0])  # 8 / 2
    eps = 1e-4
    assert list(psi_edges(ref, bins=2)) == [4.5]
    np.testing.assert_allclose(bin_shares(cur, np.array([4.5])), [0.8 + eps, 0.2 + eps])
    want = (0.8001 - 0.5001) * math.log(0.8001 / 0.5001) + (0.2001 - 0.5001) * math.log(0.2001 / 0.5001)
    assert psi(ref, cur, bins=2) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(0.41578, abs=1e-5)  # 0.3 ln(1.59988) + 0.3 ln(2.49925)
    # an empty current bin: eps keeps the log finite
    empty = (1.0001 - 0.5001) * math.log(1.0001 / 0.5001) + (0.0001 - 0.5001) * math.log(0.0001 / 0.5001)
    assert psi(ref, np.zeros(10), bins=2) == pytest.approx(empty, rel=1e-12)
    assert psi(ref, ref, bins=2) == 0.0


def test_psi_deciles_and_levels():
    ref = np.arange(100.0)
    np.testing.assert_allclose(psi_edges(ref), np.quantile(ref, np.arange(1, 10) / 10))
    # a value equal to an edge falls in the bin it closes
    assert bin_shares(np.array([9.9]), psi_edges(ref), eps=0)[0] == 1.0
    assert psi_level(0.05) == "none" and psi_level(0.1) == "moderate" and psi_level(0.25) == "major"


def test_cli_no_drift_exit_0_and_drift_exit_3(tmp_path, capsys):
    x, y = _normal(1200, 3, 0)
    xs, ys = _normal(1200, 3, 1, shift=0.6)
    xr, yr = _normal(1200, 3, 2)
    ref = _shards(tmp_path / "ref", x, y)
    same = _shards(tmp_path / "same", xr, yr)
    shifted = _shards(tmp_path / "shifted", xs, ys)
    assert main(["drift", str(ref), str(same), "--out", str(tmp_path / "d0")]) == 0
    d0 = json.loads((tmp_path / "d0" / "drift.json").read_text())
    assert d0["drift"] is False and d0["drifted_share"] == 0
    assert main(["drift", str(ref), str(shifted), "--out", str(tmp_path / "d1")]) == 3
    d1 = json.loads((tmp_path / "d1" / "drift.json").read_text())
    assert d1["drift"] is True and d1["drifted_features"] == ["f0"]
    assert d1["drifted_share"] == pytest.approx(1 / 3)
    f0 = d1["features"][0]
    want = ks_2samp(x[:, 0].astype(np.float64), xs[:, 0].astype(np.float64))
    assert f0["ks_stat"] == want.statistic and f0["ks_pvalue"] == want.pvalue
    assert f0["psi"] == pytest.approx(psi(x[:, 0], xs[:, 0]))
    assert (tmp_path / "d1" / "drift.png").stat().st_size > 1000
    assert "DRIFT" in (tmp_path / "d1" / "drift.html").read_text()
    # allowing a third of the features to drift turns the verdict
    assert main(["drift", str(ref), str(shifted), "--out", str(tmp_path / "d2"), "--max-share", "0.34"]) == 0


def test_on_drift_runs_command_without_shell(tmp_path):
    x, y = _normal(600, 2, 0)
    xs, ys = _normal(600, 2, 1, shift=1.0)
    ref, cur = _shards(tmp_path / "r", x, y), _shards(tmp_path / "c", xs, ys)
    marker = tmp_path / "it ran; $(touch pwned)"
    code = "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text('x')"
    cmd = f"{sys.executable} -c \"{code}\" '{marker}'"
    assert main(["drift", str(ref), str(cur), "--out", str(tmp_path / "o"), "--on-drift", cmd]) == 3
    assert marker.read_text() == "x"
    assert not (tmp_path / "pwned").exists()
    # no drift: the hook does not run
    marker.unlink()
    assert main(["drift", str(ref), str(ref), "--out", str(tmp_path / "o2"), "--on-drift", cmd]) == 0
    assert not marker.exists()


def test_bad_inputs_exit_2(tmp_path, capsys):
    x, y = _normal(300, 3, 0)
    ref = _shards(tmp_path / "ref", x, y)
    other = _shards(tmp_path / "other", x[:, :2], y)
    renamed = _shards(tmp_path / "renamed", x, y, names=["f0", "f1", "zz"])
    assert main(["drift", str(ref), str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "schemas differ" in err and "3 features" in err and "2" in err
    assert main(["drift", str(ref), str(renamed), "--out", str(tmp_path / "o")]) == 2
    assert "only in current: ['zz']" in capsys.readouterr().err
    assert main(["drift", str(ref), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a split with no rows is an empty shard set
    assert main(["drift", str(ref), str(ref), "--cur-split", "val", "--out", str(tmp_path / "o")]) == 2
    assert "no rows in split 'val'" in capsys.readouterr().err
    assert main(["drift", str(ref), "--out", str(tmp_path / "o")]) == 2
    assert "REF_DIR CUR_DIR" in capsys.readouterr().err
    # a manifest whose features are not numeric float32
    m = json.loads((ref / "manifest.json").read_text())
    m["schema"]["dtype"] = "str"
    (ref / "manifest.json").write_text(json.dumps(m))
    assert main(["drift", str(ref), str(renamed), "--out", str(tmp_path / "o")]) == 2
    assert "dtype" in capsys.readouterr().err


def test_bad_options_fail_fast_with_one_line(tmp_path, capsys):
    x, y = _normal(300, 2, 0)
    xs, ys = _normal(300, 2, 1, shift=2.0)
    ref, cur = _shards(tmp_path / "ref", x, y), _shards(tmp_path / "cur", xs, ys)
    (tmp_path / "file").write_text("x")
    cases = [
        (["--bins", "1"], "--bins 1"), (["--top", "0"], "--top 0"), (["--max-share", "1"], "--max-share 1"),
        # 1e8 bins hung for minutes in np.quantile and took 7 GB; one too many is as good a test, and a
        # regression then costs nothing (1e8 goes to the pure check below)
        (["--bins", "1001"], "--bins 1001: PSI takes 2 to 1000 bins"),
        (["--alpha", "nan"], "--alpha nan"), (["--max-share", "nan"], "--max-share nan"),
        (["--on-drift", "echo 'unbalanced"], "quoting"), (["--on-drift", "no-such-program-xyz"], "not an executable"),
        (["--out", str(tmp_path / "file")], "not a directory"),
        (["--out", str(tmp_path / "file" / "sub")], "not a writable directory"),
    ]
    for extra, want in cases:
        opts = ["--out", str(tmp_path / "o")] + extra if "--out" not in extra else extra
        assert main(["drift", str(ref), str(cur), *opts]) == 2, extra
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
        # checked before any data is read: nothing written
        assert not (tmp_path / "o").exists(), extra


def test_missing_share_reported_beside_the_verdict(tmp_path, capsys):
    x, y = _normal(800, 2, 0)
    xc, yc = _normal(800, 2, 1)
    xc[:320, 1] = np.nan                      # 40% missing in the current data only
    ref, cur = _shards(tmp_path / "ref", x, y), _shards(tmp_path / "cur", xc, yc)
    assert main(["drift", str(ref), str(cur), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "f1 0.0% -> 40.0%" in out and f"report: {tmp_path / 'o'}/drift.html" in out
    rec = json.loads((tmp_path / "o" / "drift.json").read_text())
    f1 = rec["features"][1]
    assert f1["ref_nonfinite_pct"] == 0.0 and f1["cur_nonfinite_pct"] == pytest.approx(100 * np.isnan(xc[:, 1]).mean())
    assert f1["cur_count"] == 480


def test_feature_that_becomes_all_missing_is_drift(tmp_path, capsys):
    x, y = _normal(400, 2, 0)
    xc, yc = _normal(400, 2, 0)               # the same rows: KS and PSI see no change in f0
    xc[:, 1] = np.nan
    ref, cur = _shards(tmp_path / "ref", x, y), _shards(tmp_path / "cur", xc, yc)
    assert main(["drift", str(ref), str(cur), "--out", str(tmp_path / "o")]) == 3
    assert "f1: finite values in one set only (reference 400, current 0)" in capsys.readouterr().out
    rec = json.loads((tmp_path / "o" / "drift.json").read_text())
    assert rec["drifted_features"] == ["f1"] and rec["features"][1]["ks_pvalue"] is None
    both_empty = feature_drift(["z"], [np.full(5, np.nan)], [np.full(5, np.nan)])[0]
    assert not both_empty.drifted and not both_empty.vanished


def test_psi_bins_bounded_in_the_library():
    from hpctrain.quality import QualityError
    from hpctrain.quality.drift import MAX_PSI_BINS, check_psi_bins, psi

    with pytest.raises(QualityError, match="--bins 100000000: PSI takes 2 to 1000 bins"):
        check_psi_bins(10**8)
    ref = np.arange(5000, dtype=np.float64)
    for bins in (1, MAX_PSI_BINS + 1):
        with pytest.raises(QualityError, match="2 to 1000 bins"):
            psi(ref, ref, bins=bins)
    assert psi(ref, ref + 1, bins=MAX_PSI_BINS) >= 0.0
