"""Balancing: class counts equal imbalanced-learn's; SMOTE points lie on neighbour segments."""

import json

import numpy as np
import pytest
from imblearn.over_sampling import SMOTE, RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler

from hpctrain.cli import main
from hpctrain.quality import QualityError
from hpctrain.quality.balance import balance_arrays, smote_class, target_counts
from hpctrain.quality.stats import class_counts


def _imbalanced(counts, f=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in counts.items()]).astype(np.int64)
    x = (rng.normal(size=(len(y), f)) + y[:, None]).astype(np.float32)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def _imblearn_counts(sampler, x, y):
    _, yr = sampler.fit_resample(x, y)
    return class_counts(yr)


@pytest.mark.parametrize("counts", [{0: 500, 1: 37}, {0: 300, 1: 120, 2: 9, 5: 61}])
@pytest.mark.parametrize("method", ["oversample", "undersample", "smote"])
def test_auto_counts_equal_imblearn(counts, method):
    x, y = _imbalanced(counts)
    sampler = {"oversample": RandomOverSampler(random_state=0), "undersample": RandomUnderSampler(random_state=0),
               "smote": SMOTE(random_state=0)}[method]
    xb, yb, before, after = balance_arrays(x, y, method, seed=1)
    assert before == counts
    assert after == _imblearn_counts(sampler, x, y)
    assert xb.shape == (len(yb), 3) and xb.dtype == np.float32


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.77, 1.0])
def test_ratio_counts_equal_imblearn_binary(ratio):
    x, y = _imbalanced({0: 431, 1: 40})
    over = _imblearn_counts(RandomOverSampler(sampling_strategy=ratio, random_state=0), x, y)
    assert balance_arrays(x, y, "oversample", ratio=ratio)[3] == over
    assert balance_arrays(x, y, "smote", ratio=ratio)[3] == _imblearn_counts(
        SMOTE(sampling_strategy=ratio, random_state=0), x, y)
    under = _imblearn_counts(RandomUnderSampler(sampling_strategy=ratio, random_state=0), x, y)
    assert balance_arrays(x, y, "undersample", ratio=ratio)[3] == under


def test_ratio_multiclass_equals_imblearn_dict_strategy():
    # imblearn takes a float for two classes only; our per-class rule equals its dict form
    counts = {0: 300, 1: 120, 2: 9}
    x, y = _imbalanced(counts)
    t = target_counts(counts, "oversample", 0.5)
    assert t == {0: 300, 1: 150, 2: 150}
    assert _imblearn_counts(RandomOverSampler(sampling_strategy=t, random_state=0), x, y) == t
    t = target_counts(counts, "undersample", 0.5)
    assert t == {0: 18, 1: 18, 2: 9}
    assert _imblearn_counts(RandomUnderSampler(sampling_strategy=t, random_state=0), x, y) == t


def test_oversample_keeps_every_row_and_undersample_draws_real_rows():
    x, y = _imbalanced({0: 200, 1: 20})
    xo, yo, _, _ = balance_arrays(x, y, "oversample", seed=3)
    rows = {tuple(r) + (int(c),) for r, c in zip(x, y)}
    assert rows <= {tuple(r) + (int(c),) for r, c in zip(xo, yo)}
    assert {tuple(r) + (int(c),) for r, c in zip(xo, yo)} <= rows
    xu, yu, _, _ = balance_arrays(x, y, "undersample", seed=3)
    assert len({tuple(r) for r in xu}) == len(xu) == 40
    assert {tuple(r) + (int(c),) for r, c in zip(xu, yu)} <= rows
    # the seed decides the draw
    assert np.array_equal(balance_arrays(x, y, "undersample", seed=3)[0], xu)
    assert not np.array_equal(balance_arrays(x, y, "undersample", seed=4)[0], xu)


def test_smote_points_lie_on_neighbour_segments():
    rng = np.random.default_rng(0)
    xm = rng.normal(size=(25, 4))
    k = 5
    s = smote_class(xm, 60, k, rng)
    d = ((xm[:, None] - xm[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    knn = np.argsort(d, axis=1)[:, :k]
    for p in s.x:
        # some row a and one of its k neighbours b with p on the segment [a, b]
        best = np.inf
        for a in range(len(xm)):
            for b in knn[a]:
                seg = xm[b] - xm[a]
                t = np.clip(np.dot(p - xm[a], seg) / np.dot(seg, seg), 0, 1)
                best = min(best, np.linalg.norm(xm[a] + t * seg - p))
        assert best < 1e-9
    assert np.all((s.gap >= 0) & (s.gap < 1))


def test_smote_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(QualityError, match="at least 2 rows"):
        smote_class(np.ones((1, 2)), 3, 5, rng)
    with pytest.raises(QualityError, match="missing"):
        smote_class(np.array([[1.0, np.nan], [2.0, 3.0]]), 3, 5, rng)
    with pytest.raises(QualityError, match="two classes"):
        target_counts({0: 10}, "oversample")
    with pytest.raises(QualityError, match="ratio"):
        target_counts({0: 10, 1: 3}, "oversample", 1.5)


def test_cli_balance_writes_new_shards_and_keeps_val(tmp_path, capsys):
    from hpctrain.data.shards import Manifest, ShardWriter, iter_arrays

    x, y = _imbalanced({0: 400, 1: 30})
    xv, yv = _imbalanced({0: 50, 1: 5}, seed=9)
    src = tmp_path / "src"
    with ShardWriter(src, feature_names=["a", "b", "c"], sample_shape=(3,), rows_per_shard=128) as w:
        w.add(x, y)
        w.add(xv, yv, split="val")
    before = (src / "manifest.json").read_bytes()
    out = tmp_path / "bal"
    assert main(["balance", str(src), "--out", str(out), "--method", "smote", "--seed", "2"]) == 0
    assert (src / "manifest.json").read_bytes() == before
    m = Manifest.load(out)
    want = _imblearn_counts(SMOTE(random_state=0), x, y)
    assert m.class_counts("train") == want
    assert m.class_counts("val") == {0: 50, 1: 5}
    got_val = np.concatenate([xx for _, xx, _ in iter_arrays(out, "val")])
    np.testing.assert_array_equal(got_val, xv)
    assert m.meta["balance"]["after"] == {str(k): v for k, v in want.items()}
    assert "after" in capsys.readouterr().out
    # refusing to overwrite the input, and a non-empty output
    assert main(["balance", str(src), "--out", str(src), "--method", "oversample"]) == 2
    assert main(["balance", str(src), "--out", str(out), "--method", "oversample"]) == 2
    assert main(["balance", str(src), "--out", str(out), "--method", "oversample", "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["meta"]["balance"]["method"] == "oversample"


def test_cli_balance_option_errors_name_the_fix(tmp_path, capsys):
    from hpctrain.data.shards import ShardWriter

    x, y = _imbalanced({0: 60, 1: 12})
    x[np.flatnonzero(y == 1)[:3], 0] = np.nan
    src = tmp_path / "src"
    with ShardWriter(src, feature_names=["a", "b", "c"], sample_shape=(3,)) as w:
        w.add(x, y)
    assert main(["balance", str(src), "--out", str(tmp_path / "b"), "--method", "smote", "--k", "0"]) == 2
    assert "--k 0" in capsys.readouterr().err
    assert main(["balance", str(src), "--out", str(tmp_path / "b"), "--method", "smote"]) == 2
    err = capsys.readouterr().err
    assert "class 1: smote: 3 of the class's 12 rows" in err and "hpctrain impute" in err
    assert not (tmp_path / "b").exists()
    # plain oversampling copes with the missing values; the summary gives the totals
    assert main(["balance", str(src), "--out", str(tmp_path / "b"), "--method", "oversample"]) == 0
    out = capsys.readouterr().out
    assert "(72 rows)" in out and "(120 rows)" in out and f"wrote {tmp_path / 'b'}" in out


def test_cli_balance_seed_range_and_smote_k_clamp_said(tmp_path, capsys):
    from hpctrain.data.shards import Manifest, ShardWriter

    x, y = _imbalanced({0: 60, 1: 12, 2: 9})
    src = tmp_path / "src"
    with ShardWriter(src, feature_names=["a", "b", "c"], sample_shape=(3,)) as w:
        w.add(x, y)
    for seed in ("-1", str(2**32)):  # -1 was numpy's "expected non-negative integer" traceback
        assert main(["balance", str(src), "--out", str(tmp_path / "b"), "--method", "oversample",
                     "--seed", seed]) == 2
        err = capsys.readouterr().err
        assert f"--seed {seed}: expected an integer from 0 to 4294967295" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    # --k larger than a class was clamped silently; now each clamped class is named with the k used
    assert main(["balance", str(src), "--out", str(tmp_path / "b"), "--method", "smote", "--k", "1000"]) == 0
    out = capsys.readouterr().out
    assert "note: class 1 has 12 rows, so SMOTE used k=11 neighbours instead of --k 1000" in out
    assert "note: class 2 has 9 rows, so SMOTE used k=8 neighbours instead of --k 1000" in out
    assert "class 0" not in out.split("train class counts")[0]  # the majority class is not resampled
    assert Manifest.load(tmp_path / "b").class_counts("train") == {0: 60, 1: 60, 2: 60}
    assert main(["balance", str(src), "--out", str(tmp_path / "c"), "--method", "smote", "--k", "3"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_balance_arrays_reports_k_used():
    x, y = _imbalanced({0: 40, 1: 4})
    notes: list[str] = []
    balance_arrays(x, y, "smote", k=5, notes=notes)
    assert notes == ["class 1 has 4 rows, so SMOTE used k=3 neighbours instead of --k 5"]
    with pytest.raises(QualityError, match="--seed -3"):
        balance_arrays(x, y, "oversample", seed=-3)
