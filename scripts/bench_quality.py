"""Benchmark of the quality statistics (one process, in-memory chunks), printed side by side.

  .venv/bin/python scripts/bench_quality.py [--rows 200000] [--cols 32]

- exact quantiles by radix selection (what distributed profiling uses) vs np.quantile on the
  concatenated data (possible only when one process holds everything);
- the whole profile (moments, quantiles, MAD, histograms, outliers, hashes, IsolationForest
  and kNN on a 5000-row sample) vs pandas describe() + quantiles on the same data.
"""

import argparse
import time

import numpy as np


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--shards", type=int, default=8)
    a = ap.parse_args()

    import pandas as pd

    from hpctrain.comm.collective import LocalCollective
    from hpctrain.quality.profile import QUANTILES, profile_chunks
    from hpctrain.quality.stats import exact_quantiles, local_sorted_columns

    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.rows, a.cols)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    y = rng.integers(0, 3, a.rows)
    bounds = np.linspace(0, a.rows, a.shards + 1).astype(int)
    chunks = [(i, x[bounds[i]:bounds[i + 1]], y[bounds[i]:bounds[i + 1]]) for i in range(a.shards)]

    def bisect():
        cols = local_sorted_columns(x)
        return exact_quantiles(cols, np.array([c.size for c in cols]), QUANTILES, LocalCollective())

    def npq():
        return np.array([np.quantile(c[np.isfinite(c)].astype(np.float64), QUANTILES) for c in x.T])

    t_b, qb = timed(bisect)
    t_n, qn = timed(npq)
    assert np.array_equal(qb, qn)
    names = [f"c{j}" for j in range(a.cols)]
    t_p, _ = timed(lambda: profile_chunks(chunks, feature_names=names, total_rows=a.rows))
    df = pd.DataFrame(x)
    t_pd, _ = timed(lambda: (df.describe(), df.quantile(list(QUANTILES))))
    print(f"data: {a.rows} rows x {a.cols} float32 columns, {a.shards} chunks, 5% NaN")
    print(f"{'exact quantiles (radix, 4 rounds)':45s} {t_b:8.3f} s")
    print(f"{'np.quantile per column (same values)':45s} {t_n:8.3f} s   ratio {t_b / t_n:5.2f}x")
    print(f"{'full profile_chunks':45s} {t_p:8.3f} s   {a.rows / t_p / 1e3:8.1f} k rows/s")
    print(f"{'pandas describe + quantile':45s} {t_pd:8.3f} s   ratio {t_p / t_pd:5.2f}x")


if __name__ == "__main__":
    main()
