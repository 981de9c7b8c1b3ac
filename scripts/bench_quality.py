"""Benchmark of the quality statistics (one process, in-memory chunks), printed side by side.

  .venv/bin/python scripts/bench_quality.py [--rows 200000] [--cols 32]

- exact quantiles by radix selection (what distributed profiling uses) vs np.quantile on the
  concatenated data (possible only when one process holds everything);
- the whole profile (moments, quantiles, MAD, histograms, outliers, hashes, IsolationForest
  and kNN on a 5000-row sample) vs pandas describe() + quantiles on the same data, which
  computes far less: a context figure, not a like-for-like peer.

Every contender runs once untimed (warm-up: imports, first-touch, numba compile or cache
load), then --repeat times, the contenders interleaved in each repetition; the fastest
repetition of each is shown, with the median beside it. Ratios are time / peer time: above 1
means slower than the peer.
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
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of every contender (after a warm-up)")
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

    def radix():
        cols = local_sorted_columns(x)
        return exact_quantiles(cols, np.array([c.size for c in cols]), QUANTILES, LocalCollective())

    def npq():
        return np.array([np.quantile(c[np.isfinite(c)].astype(np.float64), QUANTILES) for c in x.T])

    names = [f"c{j}" for j in range(a.cols)]
    df = pd.DataFrame(x)
    contenders = {
        "radix": radix,
        "np.quantile": npq,
        "profile": lambda: profile_chunks(chunks, feature_names=names, total_rows=a.rows),
        "pandas": lambda: (df.describe(), df.quantile(list(QUANTILES))),
    }
    qb, qn = radix(), npq()  # warm-up of every contender, and the equality check
    if not np.array_equal(qb, qn):
        raise SystemExit("bench: the radix-selection quantiles differ from np.quantile")
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(a.repeat):
        for k, fn in contenders.items():
            times[k].append(timed(fn)[0])
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"data: {a.rows} rows x {a.cols} float32 columns, {a.shards} chunks, 5% NaN; warm-up run of each, then "
          f"best (median) of {a.repeat} interleaved repetitions")

    def row(label: str, k: str) -> str:
        return f"{label:45s} {best[k]:8.3f} s ({med[k]:.3f})"

    print(row("exact quantiles (radix, 4 rounds)", "radix") + "   identical values to np.quantile")
    print(row("np.quantile per column (same values)", "np.quantile"))
    r = best["radix"] / best["np.quantile"]
    print(f"  radix selection / np.quantile: {r:.2f}x the time ({'faster' if r < 1 else 'slower'})")
    print(row("full profile_chunks", "profile") + f"   {a.rows / best['profile'] / 1e3:8.1f} k rows/s")
    print(row("pandas describe + quantile", "pandas"))
    r = best["profile"] / best["pandas"]
    print(f"  profile_chunks / pandas: {r:.2f}x the time ({r:.1f}x {'slower' if r > 1 else 'faster'}; "
          "pandas computes far less)")


if __name__ == "__main__":
    main()
