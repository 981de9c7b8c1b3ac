#!/usr/bin/env python
"""Loader throughput: raw slab reads (a) vs ShardLoader (b) vs naive per-sample Dataset (c).

    python scripts/bench_loader.py                     # ~1 GB of float32 in /tmp, one process
    python scripts/bench_loader.py --gb 0.2 --naive-samples 5000

Each phase runs in its own child process so its peak RSS is its own; RSS is reported as
the peak minus the child's RSS after imports (the data it held, not the interpreter).
Each of (a) and (b) makes --repeat full passes and reports the fastest.
The files are written once (kept for re-runs unless --fresh) and are in the page cache
while timed, so this measures the CPU path of reading, as a warm cache on a parallel
file system would; all three phases read the same files.

(c) is about 1000x slower, so it is timed on a fixed random subset (--naive-samples)
and its full-epoch time is scaled from that rate; its output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_data(out: Path, gb: float, features: int, shards: int, compression: str) -> None:
    import numpy as np

    from hpctrain.data.shards import Manifest, ShardError, ShardWriter

    rows = int(gb * 2**30 / (4 * features))
    try:
        m = Manifest.load(out)
        if m.rows() == rows and m.schema.sample_shape == (features,) and len(m.shards) == shards \
                and m.meta.get("compression") == compression:
            print(f"reusing {out} ({rows} rows x {features} float32, {len(m.shards)} shards)", flush=True)
            return
    except ShardError:
        pass
    t0 = time.perf_counter()
    per = -(-rows // shards)
    with ShardWriter(out, feature_names=None, sample_shape=(features,), rows_per_shard=per,
                     compression=compression, overwrite=True) as w:
        step = 1 << 16
        for i, s in enumerate(range(0, rows, step)):
            n = min(step, rows - s)
            rng = np.random.default_rng([0, i])
            w.add(rng.standard_normal((n, features), dtype=np.float32), rng.integers(0, 10, n))
    print(f"wrote {out}: {rows} rows x {features} float32 ({rows * features * 4 / 2**30:.2f} GiB) in {shards} shards "
          f"({compression}) in {time.perf_counter() - t0:.1f} s", flush=True)


def phase_raw(d: Path, args) -> dict:
    import numpy as np

    from hpctrain.data.shards import Manifest, h5_open

    import h5py  # noqa: F401  imported before the clock starts, as in (b)

    m = Manifest.load(d)
    base = rss_mb()
    slab = m.chunk_rows * 16
    buf = np.empty((slab, *m.schema.sample_shape), np.float32)

    def one_pass() -> int:
        n = 0
        for s in m.shards:
            with h5_open(m.path(s)) as f:
                x = f["x"]
                for a in range(0, s.rows, slab):
                    b = min(a + slab, s.rows)
                    x.read_direct(buf, np.s_[a:b], np.s_[0:b - a])
                    n += b - a
        return n

    return timed_passes(one_pass, base, note=f"slabs of {slab} rows")


def timed_passes(one_pass, base: float, **extra) -> dict:
    """Two passes in this process: the first includes one-off costs (first touch of buffers,
    opening files), the second is the steady state of a multi-epoch run."""
    out: dict = {}
    for key in ("", "warm_"):
        t0, c0 = time.perf_counter(), time.process_time()
        n = one_pass()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.update({f"{key}samples": n, f"{key}seconds": dt, f"{key}rate": n / dt, f"{key}cpu_rate": n / cpu})
    return {**out, "peak_mb": peak_mb() - base, **extra}


def phase_loader(d: Path, args) -> dict:
    import numpy as np

    import h5py  # noqa: F401  imported before the clock starts, as in (a)
    import torch

    from hpctrain.data.loader import ShardLoader

    torch.set_num_threads(1)
    L = ShardLoader(d, 0, 1, args.batch, shuffle=True, seed=0, prefetch=args.prefetch, buffer_rows=args.buffer_rows)
    base = rss_mb()
    epoch = [args.epoch * 2]

    def one_pass() -> int:
        L.set_epoch(epoch[0])
        epoch[0] += 1
        n = 0
        for x, _y in L:
            n += x.shape[0]
        return n

    r = timed_passes(one_pass, base)
    row = 4 * int(np.prod(L.sample_shape)) + 8
    g = L.block_batches
    waiting = max(1, -(-args.prefetch // g)) if args.prefetch else 0
    blocks = waiting + 2  # queued + the one being filled + the one being consumed
    nbuf = 2 if args.prefetch else 1  # with prefetch the next buffer is read while this one is cut
    # The buffers' rows, plus 16 bytes per row of permutation indices, plus the blocks in flight.
    bound = (nbuf * L.buffer_rows * (row + 16) + blocks * g * args.batch * row) / 2**20
    r.update(bound_mb=bound, note=f"bound: {nbuf} shuffle buffer(s) of {L.buffer_rows} rows (+ indices) + {blocks} "
                                  f"blocks of {g} batches x {args.batch} = {bound:.1f} MiB")
    return r


def phase_naive(d: Path, args) -> dict:
    import h5py
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from hpctrain.data.shards import Manifest

    torch.set_num_threads(1)
    m = Manifest.load(d)

    class PerSample(Dataset):
        """What users write first: one dset[i] per sample, shuffled by the DataLoader."""

        def __init__(self) -> None:
            self.starts = np.cumsum([0] + [s.rows for s in m.shards])
            self.files: dict = {}

        def __len__(self) -> int:
            return int(self.starts[-1])

        def __getitem__(self, i):
            k = int(np.searchsorted(self.starts, i, side="right") - 1)
            if k not in self.files:  # plain h5py defaults, as a user would open it
                f = h5py.File(m.path(m.shards[k]), "r", locking=False)
                self.files[k] = (f["x"], f["y"])
            x, y = self.files[k]
            j = i - int(self.starts[k])
            return torch.from_numpy(x[j]), int(y[j])

    ds = PerSample()
    dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=0,
                    generator=torch.Generator().manual_seed(0))
    base = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for x, _ in dl:
        n += x.shape[0]
        if n >= args.naive_samples:
            break
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"samples": n, "seconds": dt, "rate": n / dt, "cpu_rate": n / cpu, "peak_mb": peak_mb() - base,
            "note": f"timed on a random subset of {n} samples; full epoch of {len(ds)} scaled: "
                    f"{len(ds) / (n / dt):.0f} s"}


PHASES = {"a": phase_raw, "b": phase_loader, "c": phase_naive}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/hpctrain-bench-loader", help="where the shards are written (not the repo)")
    ap.add_argument("--gb", type=float, default=1.0, help="data size in GiB (default 1)")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--buffer-rows", type=int, default=None, help="shuffle buffer (default: ~64 MiB of samples)")
    ap.add_argument("--naive-samples", type=int, default=20_000, help="subset size timed for (c)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="alternating passes of (a) and (b); the fastest of each is reported")
    ap.add_argument("--fresh", action="store_true", help="rewrite the data even if it is there")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--epoch", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    d = Path(args.dir)
    if args.phase:
        print(json.dumps(PHASES[args.phase](d, args)))
        return 0
    if args.fresh and (d / "manifest.json").exists():
        (d / "manifest.json").unlink()
    write_data(d, args.gb, args.features, args.shards, args.compression)
    results: dict = {}
    runs: dict = {}
    names = {"a": "(a) raw h5py slab reads", "b": "(b) ShardLoader, shuffled, torch",
             "c": "(c) naive Dataset+DataLoader"}
    passthru = [a for a in sys.argv[1:] if a != "--fresh"]
    # (a) and (b) alternate, each pass in a fresh process, so both see the same (shared-machine)
    # load; the fastest pass of each is reported, with the largest peak memory.
    order = [x for i in range(args.repeat) for x in (("a", i), ("b", i))] + [("c", 0)]
    for p, i in order:
        out = subprocess.run([sys.executable, __file__, *passthru, "--phase", p, "--epoch", str(i)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runs.setdefault(p, []).append(r)
        if p in results:
            peak = max(results[p]["peak_mb"], r["peak_mb"])
            best = {k: max(results[p][k], r[k]) for k in ("cpu_rate", "warm_rate", "warm_cpu_rate") if k in r}
            if r["rate"] > results[p]["rate"]:
                results[p] = r
            results[p].update(best, peak_mb=peak)
            continue
        results[p] = r
    for p in ("a", "b", "c"):
        r = results[p]
        print(f"{names[p]:34s} {r['rate']:>11,.0f} samples/s {r['cpu_rate']:>11,.0f} per CPU-s  "
              f"peak +{r['peak_mb']:6.1f} MiB  "
              f"({r['samples']} samples in {r['seconds']:.2f} s; {r['note']})", flush=True)
    ab = results["b"]["rate"] / results["a"]["rate"]
    bc = results["b"]["rate"] / results["c"]["rate"]
    print(f"(a) and (b): fastest of {args.repeat} alternating full passes, each in a fresh process (the machine "
          "may be shared); (c): one timed subset")
    cab = results["b"]["cpu_rate"] / results["a"]["cpu_rate"]
    cbc = results["b"]["cpu_rate"] / results["c"]["cpu_rate"]
    print(f"(b)/(a) = {ab:.2f} wall, {cab:.2f} per CPU-second  (target >= 0.7): first pass in each process")
    wab = results["b"]["warm_rate"] / results["a"]["warm_rate"]
    wcab = results["b"]["warm_cpu_rate"] / results["a"]["warm_cpu_rate"]
    print(f"(b)/(a) = {wab:.2f} wall, {wcab:.2f} per CPU-second: second pass (a later epoch for (b)), "
          f"{results['a']['warm_rate']:,.0f} vs {results['b']['warm_rate']:,.0f} samples/s")
    pairs = [f"{rb['rate'] / ra['rate']:.2f}/{rb['warm_rate'] / ra['warm_rate']:.2f}"
             for ra, rb in zip(runs["a"], runs["b"])]
    print("(b)/(a) wall of each alternating pair, first/second pass: " + " ".join(pairs))
    print(f"(b)/(c) = {bc:,.0f} wall, {cbc:,.0f} per CPU-second  (target >= 100)")
    print("per CPU-second counts every thread's CPU time, so it is the ratio of work per sample and "
          "depends far less on what else runs on the machine; (b) includes its prefetch thread")
    print(f"(b) peak +{results['b']['peak_mb']:.1f} MiB vs stated bound {results['b']['bound_mb']:.1f} MiB "
          "(buffer + blocks in flight; the fixed HDF5/allocator overhead is about (a)'s peak minus its 16 MiB slab)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
