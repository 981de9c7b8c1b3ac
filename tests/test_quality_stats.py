"""Mergeable statistics, exact quantiles, outliers and row checks against numpy/pandas/scipy/sklearn."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hpctrain.quality import QualityError
from hpctrain.quality.dist import LocalComm
from hpctrain.quality.outliers import anomaly_scores, count_outliers, iqr_fences, knn_majority, \
    label_noise_suspects, zscore_fences
from hpctrain.quality.profile import QUANTILES, duplicate_counts, profile_chunks
from hpctrain.quality.stats import CoMoments, Moments, as_2d, exact_mad, exact_quantiles, float_keys, histograms, \
    keys_to_float, local_sorted_columns, merge_all, row_hashes


def _data(n=2000, f=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32) * np.arange(1, f + 1, dtype=np.float32) + 3
    x[rng.random(x.shape) < 0.07] = np.nan
    x[:, -1] = np.round(x[:, -1])  # many ties
    x[10, 0], x[11, 1] = np.inf, -np.inf
    y = (rng.random(n) < 0.25).astype(np.int64)
    return x, y


def _chunks(x, y, sizes):
    out, start = [], 0
    for i, s in enumerate(sizes):
        out.append((i, x[start:start + s], y[start:start + s]))
        start += s
    assert start == len(x)
    return out


def _finite_df(x):
    return pd.DataFrame(x.astype(np.float64)).replace([np.inf, -np.inf], np.nan)


class ThreadComm(LocalComm):
    """Several 'ranks' as threads of one process: allreduce/gather/bcast through shared slots
    and a barrier, so the distributed code paths run for real without MPI."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.sh = rank, size, shared

    def _exchange(self, obj):
        sh = self.sh
        sh["slots"][self.rank] = obj
        sh["barrier"].wait()
        out = list(sh["slots"])
        sh["barrier"].wait()
        return out

    def allreduce(self, a, op="sum"):
        return sum(self._exchange(np.asarray(a)))

    def gather(self, obj, root=0):
        out = self._exchange(obj)
        return out if self.rank == 0 else None

    def broadcast(self, obj, root=0):
        return self._exchange(obj)[0]

    def barrier(self):
        self.sh["barrier"].wait()


def run_ranks(size, fn):
    """fn(comm) on ``size`` thread-ranks; returns each rank's result."""
    import threading

    shared = {"slots": [None] * size, "barrier": threading.Barrier(size)}
    results, errors = [None] * size, []

    def target(r):
        try:
            results[r] = fn(ThreadComm(r, size, shared))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_moments_merge_equals_pandas():
    x, _ = _data()
    parts = [Moments.from_chunk(x[a:b]) for a, b in [(0, 1), (1, 700), (700, 700), (700, 2000)]]
    m = merge_all(parts)
    df = _finite_df(x)
    np.testing.assert_array_equal(m.count, df.count().to_numpy())
    np.testing.assert_array_equal(m.nan_count, np.isnan(x).sum(axis=0))
    np.testing.assert_array_equal(m.inf_count, np.isinf(x).sum(axis=0))
    np.testing.assert_allclose(m.mean, df.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(m.std(), df.std().to_numpy(), rtol=1e-10)
    np.testing.assert_array_equal(m.min, df.min().to_numpy())
    np.testing.assert_array_equal(m.max, df.max().to_numpy())


def test_moments_stable_with_large_offset():
    # sum/sumsq would lose every digit of the variance here; Chan's merge keeps them
    rng = np.random.default_rng(1)
    x = (1e9 + rng.normal(size=(3000, 1))).astype(np.float64)
    m = merge_all([Moments.from_chunk(x[i:i + 100]) for i in range(0, 3000, 100)])
    np.testing.assert_allclose(m.std(), x.std(axis=0, ddof=1), rtol=1e-6)


def test_comoments_equal_corrcoef_on_complete_rows():
    x, _ = _data(f=4)
    c = merge_all([CoMoments.from_chunk(x[i:i + 333]) for i in range(0, len(x), 333)])
    full = x[np.isfinite(x).all(axis=1)].astype(np.float64)
    assert c.n == len(full)
    np.testing.assert_allclose(c.corr(), np.corrcoef(full, rowvar=False), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_keys_preserve_order_and_round_trip(dtype):
    v = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7.25, np.inf], dtype=dtype)
    k = float_keys(v)
    assert np.all(np.diff(k.astype(np.float64)) >= 0) and np.all(k[1:] >= k[:-1])
    np.testing.assert_array_equal(keys_to_float(k, dtype), v)


def test_exact_quantiles_equal_numpy_with_ties_and_nan():
    x, _ = _data()
    cols = local_sorted_columns(x)
    counts = np.array([c.size for c in cols])
    got = exact_quantiles(cols, counts, QUANTILES, LocalComm())
    for j in range(x.shape[1]):
        col = x[:, j].astype(np.float64)
        want = np.quantile(col[np.isfinite(col)], QUANTILES)
        np.testing.assert_array_equal(got[j], want)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 60),
                  elements=st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)),
       st.lists(st.floats(0, 1), min_size=1, max_size=5))
def test_exact_quantiles_property(col, qs):
    got = exact_quantiles([np.sort(col)], np.array([col.size]), qs, LocalComm())[0]
    np.testing.assert_allclose(got, np.quantile(col.astype(np.float64), qs), rtol=1e-12, atol=1e-30)


def test_exact_quantiles_over_three_thread_ranks():
    x, _ = _data(n=1500, f=3, seed=4)
    parts = [x[:600], x[600:601], x[601:]]
    counts = np.isfinite(x).sum(axis=0)

    def fn(comm):
        cols = local_sorted_columns(parts[comm.rank])
        med = exact_quantiles(cols, counts, [0.5], comm)[:, 0]
        return exact_quantiles(cols, counts, [0.0, 0.1, 0.5, 0.9, 1.0], comm), exact_mad(cols, counts, med, comm)

    res = run_ranks(3, fn)
    for j in range(3):
        col = x[:, j][np.isfinite(x[:, j])].astype(np.float64)
        np.testing.assert_array_equal(res[0][0][j], np.quantile(col, [0.0, 0.1, 0.5, 0.9, 1.0]))
        assert res[0][1][j] == pytest.approx(np.median(np.abs(col - np.median(col))), rel=1e-12)
    for r in res[1:]:
        np.testing.assert_array_equal(r[0], res[0][0])


def test_profile_on_two_thread_ranks_equals_one_rank():
    x, y = _data(n=1200)
    names = [f"c{j}" for j in range(x.shape[1])]
    chunks = _chunks(x, y, [300, 300, 300, 300])
    one = profile_chunks(chunks, feature_names=names, total_rows=1200, declared_classes=[0, 1])
    two = run_ranks(2, lambda comm: profile_chunks(chunks[comm.rank::2], feature_names=names, total_rows=1200,
                                                   comm=comm, declared_classes=[0, 1]))
    assert two[0] == one and two[1] == one


def test_mad_equals_scipy():
    from scipy.stats import median_abs_deviation

    x, _ = _data()
    cols = local_sorted_columns(x)
    counts = np.array([c.size for c in cols])
    med = exact_quantiles(cols, counts, [0.5], LocalComm())[:, 0]
    mad = exact_mad(cols, counts, med, LocalComm())
    for j in range(x.shape[1]):
        col = x[:, j][np.isfinite(x[:, j])].astype(np.float64)
        assert mad[j] == pytest.approx(median_abs_deviation(col), rel=1e-12)


def test_histograms_add_up_to_numpy():
    x, _ = _data()
    df = _finite_df(x)
    lo, hi = df.min().to_numpy(), df.max().to_numpy()
    h = histograms(x[:800], lo, hi, 17) + histograms(x[800:], lo, hi, 17)
    for j in range(x.shape[1]):
        col = x[:, j][np.isfinite(x[:, j])]
        np.testing.assert_array_equal(h[j], np.histogram(col, bins=17, range=(lo[j], hi[j]))[0])


def test_outlier_counts_iqr_and_robust_z():
    x, _ = _data()
    df = _finite_df(x)
    q1, q3 = df.quantile(0.25).to_numpy(), df.quantile(0.75).to_numpy()
    got = count_outliers(x, iqr_fences(q1, q3))
    iqr = q3 - q1
    want = ((df < q1 - 1.5 * iqr) | (df > q3 + 1.5 * iqr)).sum().to_numpy()
    np.testing.assert_array_equal(got, want)
    med = df.median().to_numpy()
    mad = (df - med).abs().median().to_numpy()
    z = 0.6745 * (df - med) / mad
    np.testing.assert_array_equal(count_outliers(x, zscore_fences(med, mad)), (z.abs() > 3.5).sum().to_numpy())


def test_robust_z_ignores_zero_mad():
    x = np.array([[1.0], [1.0], [1.0], [50.0]])
    assert count_outliers(x, zscore_fences(np.array([1.0]), np.array([0.0])))[0] == 0


def test_row_hash_duplicates_equal_pandas():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(400, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[0, 0], x[1, 0] = -0.0, 0.0
    y = rng.integers(0, 2, size=400)
    df = pd.DataFrame(x).assign(y=y)
    dup, conflicted = duplicate_counts(row_hashes(x, y), row_hashes(x))
    assert dup == int(df.duplicated().sum())
    feats = pd.DataFrame(x)
    labels_per = df.groupby(list(range(3)), dropna=False)["y"].transform("nunique")
    assert conflicted == int((labels_per > 1).sum())
    assert len(feats) == 400


def test_non_numeric_rejected():
    with pytest.raises(QualityError, match="not numeric"):
        as_2d(np.array([["a", "b"]]), "features")
    with pytest.raises(QualityError, match="not numeric"):
        Moments.from_chunk(np.array([[object()]], dtype=object))


def test_anomaly_scores_match_sklearn():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    x[:5] += 8
    scores, flags = anomaly_scores(x, seed=7)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    ref = IsolationForest(random_state=7).fit(z)
    np.testing.assert_allclose(scores, -ref.score_samples(z))
    assert set(np.argsort(-scores)[:5]) == set(range(5))
    np.testing.assert_array_equal(flags, ref.predict(z) == -1)


def test_knn_label_noise_matches_brute_force():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (60, 2)), rng.normal(6, 1, (60, 2))])
    y = np.array([0] * 60 + [1] * 60)
    flipped = [3, 70, 100]
    y[flipped] = 1 - y[flipped]
    sus = label_noise_suspects(x, y, k=5)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :5]
    maj = (y[nn].sum(axis=1) >= 3).astype(int)
    np.testing.assert_array_equal(sus, maj != y)
    assert set(np.flatnonzero(sus)) == set(flipped)
    m, share = knn_majority(x, y, 5)
    np.testing.assert_array_equal(m, maj)


def test_profile_equals_pandas_and_is_chunking_invariant():
    x, y = _data(n=1800)
    names = [f"c{j}" for j in range(x.shape[1])]
    a = profile_chunks(_chunks(x, y, [1800]), feature_names=names, total_rows=1800)
    b = profile_chunks(_chunks(x, y, [250, 1, 600, 949]), feature_names=names, total_rows=1800,
                       declared_classes=[0, 1, 2])
    df = _finite_df(x)
    for j, c in enumerate(b["columns"]):
        col = x[:, j][np.isfinite(x[:, j])].astype(np.float64)
        assert c["count"] == df[j].count() and c["missing"] == int(np.isnan(x[:, j]).sum())
        assert c["mean"] == pytest.approx(df[j].mean(), rel=1e-12)
        assert c["std"] == pytest.approx(df[j].std(), rel=1e-10)
        assert [c["quantiles"][f"{q:g}"] for q in QUANTILES] == list(np.quantile(col, QUANTILES))
        assert c["quantiles"] == a["columns"][j]["quantiles"]
        assert c["histogram"]["counts"] == a["columns"][j]["histogram"]["counts"]
        assert c["outliers_iqr"] == a["columns"][j]["outliers_iqr"]
    assert b["classes"]["counts"] == {"0": int((y == 0).sum()), "1": int((y == 1).sum()), "2": 0}
    assert b["classes"]["imbalance_ratio"] == pytest.approx((y == 0).sum() / (y == 1).sum())
    assert any(w["kind"] == "absent_class" for w in b["warnings"])
    assert [c["inf_count"] for c in b["columns"]] == list(np.isinf(x).sum(axis=0))
    assert {w["column"] for w in b["warnings"] if w["kind"] == "infinite"} == {"c0", "c1"}


def test_profile_warnings_fire_at_their_thresholds():
    rng = np.random.default_rng(2)
    n = 1000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 1] = 5.0                                   # constant
    x[:, 2] = np.where(np.arange(n) < 995, 1.0, x[:, 2])  # near-constant (99.5% one value)
    x[: n // 4, 3] = np.nan                         # 25% missing
    x[900:920] = x[300:320]                         # 20 duplicates (2%) ...
    y = np.where(np.arange(n) < 950, 0, 1)
    y[900:920] = y[300:320]                         # ... with the same labels
    r = profile_chunks(_chunks(x, y, [500, 500]), feature_names=list("abcd"), total_rows=n)
    kinds = {(w["kind"], w.get("column")) for w in r["warnings"]}
    assert ("constant", "b") in kinds and ("near_constant", "c") in kinds and ("missing", "d") in kinds
    assert ("imbalance", None) in kinds and ("duplicates", None) in kinds
    assert r["duplicates"]["rows"] == 20
    miss = next(w for w in r["warnings"] if w["kind"] == "missing")
    assert miss["threshold"] == 20.0 and miss["value"] == pytest.approx(25.0)
