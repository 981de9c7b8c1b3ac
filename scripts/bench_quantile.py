"""The two exact distributed selection algorithms hpctrain had, timed on the same data.

  .venv/bin/python scripts/bench_quantile.py [--rows 400000] [--cols 16] [--repeat 3]
  mpirun -np 2 .venv/bin/python scripts/bench_quantile.py      # the same over 2 ranks

- bisection: over the order-preserving integer keys, one allreduce of a count per round
  (32 rounds for float32, 64 for float64); it was quality/stats.py's routine and is kept
  here, written out, only as the baseline;
- radix: one 8-bit digit per round (4 or 8 rounds, each one allreduce of a 256-bin
  histogram); hpctrain.kernels.order_stats, used by quality and the imputer.

Two inputs, as the library has them:
- sorted columns (the quality profile: quantiles of float32 features, and the float64
  absolute deviations of the MAD); the local count is a binary search either way;
- raw float32 chunks (the imputer's streaming median over shards): a pass over the data
  per round; bisection's keys are precomputed once, in its favour.
Both give the same values (checked); the table prints the median time of each, side by side.
"""

import argparse
import time

import numpy as np


def bisect_keys(count_le, want: np.ndarray, nbits: int, comm) -> np.ndarray:
    """The smallest key k with (global count of keys <= k) >= want + 1, per entry."""
    want = np.asarray(want, dtype=np.int64) + 1
    lo = np.zeros(want.shape, dtype=np.uint64)
    hi = np.full(want.shape, np.uint64((1 << nbits) - 1), dtype=np.uint64)
    for _ in range(nbits):
        mid = lo + (hi - lo) // np.uint64(2)
        ok = comm.allreduce(count_le(mid)) >= want
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + np.uint64(1))
    return lo


def median_of(fn, repeat: int, comm) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        comm.barrier()
        t = time.perf_counter()
        out = fn()
        times.append(comm.allreduce(np.array([time.perf_counter() - t]), "max")[0])
    return float(np.median(times)), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000, help="rows over all ranks")
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    from hpctrain.comm.world import world
    from hpctrain.kernels.impute import radix_select as impute_radix
    from hpctrain.kernels.order_stats import float_keys, order_statistics

    comm = world()
    rng = np.random.default_rng(0)
    full = rng.normal(size=(a.rows, a.cols)).astype(np.float32)
    full[rng.random(full.shape) < 0.05] = np.nan
    x = np.ascontiguousarray(full[comm.rank::comm.size])
    count = (~np.isnan(full)).sum(axis=0)
    qs = np.array([0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0])
    targets = [np.unique(np.floor((n - 1) * qs).astype(np.int64)) for n in count]
    rows = []

    for label, cols, nbits in (
            ("sorted float32 (quantiles)", [np.sort(c[~np.isnan(c)]) for c in x.T], 32),
            ("sorted float64 (MAD)", [np.sort(np.abs(c[~np.isnan(c)].astype(np.float64) - 0.1)) for c in x.T], 64)):
        keys = [float_keys(c) for c in cols]
        width = max(len(t) for t in targets)
        want = np.stack([np.pad(t, (0, width - len(t)), mode="edge") for t in targets])

        def count_le(mid, keys=keys):
            return np.stack([np.searchsorted(k, mid[j], side="right") for j, k in enumerate(keys)])

        tb, kb = median_of(lambda: bisect_keys(count_le, want, nbits, comm), a.repeat, comm)  # noqa: B023
        tr, kr = median_of(lambda: order_statistics(keys, targets, nbits, comm), a.repeat, comm)  # noqa: B023
        same = all(np.array_equal(kb[j, :len(t)], kr[j]) for j, t in enumerate(targets))
        rows.append((label, tb, tr, same))

    ranks = np.stack([(count - 1) // 2, count // 2], axis=1)
    xkeys = float_keys(x)  # NaN keys sort above every finite key, so they never reach a median

    def chunk_count_le(mid):
        return np.stack([(xkeys[:, j, None] <= mid[j][None, :]).sum(axis=0) for j in range(x.shape[1])])

    impute_radix(lambda: [x], ranks, comm)  # numba compiles here, outside the timing
    tb, kb = median_of(lambda: bisect_keys(chunk_count_le, ranks, 32, comm), a.repeat, comm)
    tr, vr = median_of(lambda: impute_radix(lambda: [x], ranks, comm), a.repeat, comm)
    from hpctrain.kernels.order_stats import keys_to_float

    rows.append(("raw float32 chunks (median)", tb, tr, np.array_equal(keys_to_float(kb, np.float32), vr)))

    if comm.rank == 0:
        print(f"exact selection, {a.rows} rows x {a.cols} columns over {comm.size} rank(s); "
              f"median of {a.repeat} runs, seconds")
        print(f"{'input':30s} {'bisection':>10s} {'radix':>10s} {'bisect/radix':>13s}  same values")
        for label, tb, tr, same in rows:
            print(f"{label:30s} {tb:10.4f} {tr:10.4f} {tb / tr:12.1f}x  {same}")


if __name__ == "__main__":
    main()
