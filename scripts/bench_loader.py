#!/usr/bin/env python
"""Loader throughput: the limit (a), ShardLoader (b), two informed torch peers (d, e), a naive peer (c).

    python scripts/bench_loader.py                     # ~1 GiB of float32 in /tmp
    python scripts/bench_loader.py --gb 0.2 --naive-samples 5000 --repeat 3

(a)  the limit: the same x and y rows read sequentially in 32-chunk slabs with read_direct into
     one preallocated buffer, every file opened once (in the first pass) and kept open,
     chunk cache off.
(b)  ShardLoader: shuffled torch batches (reader thread + assembler thread).
(d)  informed torch peer: Dataset item = one batch, a contiguous slice of a shard read with one
     h5py call; DataLoader(batch_size=None, num_workers=2, persistent_workers=True); batches
     in uniform random order.
(e)  the same with an item of one whole chunk (a contiguous run of 4096 rows here), runs in
     random order, rows permuted inside the run by the worker, cut into batches by the main
     process: one DataLoader hand-off per run instead of per batch.
(f)  ShardLoader as (b) over an encrypted copy of the same shards ('hpctrain shard --encrypt':
     AES-256-GCM; the rows' byte ranges decrypted straight into the loader's buffers, no
     plaintext on disk); target >= 0.7x (b).
(c)  naive: one dset[i] per sample, DataLoader(shuffle=True); timed on a subset (about 1000x
     slower), its full-epoch time scaled from that rate.

Each timed process makes two passes: the first includes one-off costs (opening files, first
touch, thread or worker start), the second is the steady state of a later epoch. (a), (b), (d)
and (e) run --repeat rounds, each a fresh process, in a rotated order; for each contender the
process with the fastest first pass is shown as a whole row (and, separately, the one with the
fastest second pass): never the best of each column taken from different processes. Every
process's figures are printed too. Peak RSS is the process's peak minus its RSS after imports.
The files are written once (kept for re-runs unless --fresh) and are in the page cache while
timed, so this measures the CPU path of reading. Last, the batch-mixing measure: distinct
source slabs per ShardLoader batch against a uniform random permutation.
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


def enc_paths(d: Path) -> tuple[Path, Path]:
    """The encrypted copy of the bench data and its key file, beside the plaintext shards."""
    return d.parent / f"{d.name}-enc", d.parent / f"{d.name}-key" / "key"


def bench_key(d: Path):
    from hpctrain.secure.keys import keygen, load_key

    path = enc_paths(d)[1]
    if not path.is_file():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return keygen(path)
    return load_key(path)


def write_data(out: Path, gb: float, features: int, shards: int, compression: str, key=None) -> None:
    import numpy as np

    from hpctrain.data.shards import Manifest, ShardError, ShardWriter

    rows = int(gb * 2**30 / (4 * features))
    try:
        m = Manifest.load(out)
        if m.rows() == rows and m.schema.sample_shape == (features,) and len(m.shards) == shards \
                and m.meta.get("compression") == compression \
                and (m.encryption or {}).get("key_id") == (key.key_id if key is not None else None):
            print(f"reusing {out} ({rows} rows x {features} float32, {len(m.shards)} shards)", flush=True)
            return
    except ShardError:
        pass
    t0 = time.perf_counter()
    per = -(-rows // shards)
    with ShardWriter(out, feature_names=None, sample_shape=(features,), rows_per_shard=per,
                     compression=compression, overwrite=True, key=key) as w:
        step = 1 << 16
        for i, s in enumerate(range(0, rows, step)):
            n = min(step, rows - s)
            rng = np.random.default_rng([0, i])
            w.add(rng.standard_normal((n, features), dtype=np.float32), rng.integers(0, 10, n))
    print(f"wrote {out}: {rows} rows x {features} float32 ({rows * features * 4 / 2**30:.2f} GiB) in {shards} shards "
          f"({compression}) in {time.perf_counter() - t0:.1f} s", flush=True)


def phase_raw(d: Path, args) -> dict:
    """The limit: the same x and y rows read sequentially, each shard in slabs of whole chunks
    straight into one preallocated buffer (``read_direct``), no shuffle, no copy. Every file is
    opened once, with the chunk cache off (reads cover whole chunks, so a cache only adds a
    copy), and kept open for the second pass."""
    import numpy as np

    from hpctrain.data.shards import Manifest, h5_open

    import h5py  # noqa: F401  imported before the clock starts, as in (b)

    m = Manifest.load(d)
    base = rss_mb()
    slab = m.chunk_rows * args.raw_slab_chunks
    xbuf = np.empty((slab, *m.schema.sample_shape), np.float32)
    ybuf = np.empty(slab, np.int64)
    cache = {} if args.raw_cache_mb < 0 else {"rdcc_nbytes": int(args.raw_cache_mb * 2**20)}
    files: list = []  # opened in the first pass (as (b) opens its files), kept open for the second

    def one_pass() -> int:
        if not files:
            files.extend(h5_open(m.path(s), **cache) for s in m.shards)
        n = 0
        for f, s in zip(files, m.shards):
            x, y = f["x"], f["y"]
            for a in range(0, s.rows, slab):
                b = min(a + slab, s.rows)
                x.read_direct(xbuf, np.s_[a:b], np.s_[0:b - a])
                y.read_direct(ybuf, np.s_[a:b], np.s_[0:b - a])
                n += b - a
        return n

    cache_note = "HDF5 default chunk cache" if args.raw_cache_mb < 0 else f"chunk cache {args.raw_cache_mb:g} MiB"
    return timed_passes(one_pass, base, note=f"slabs of {slab} rows, x and y, files open once, {cache_note}")


def timed_passes(one_pass, base: float, cpu=time.process_time, **extra) -> dict:
    """Two passes in this process: the first includes one-off costs (first touch of buffers,
    thread or worker start), the second is the steady state of a multi-epoch run. ``cpu`` is
    the CPU-seconds clock of everything doing the work (the process, plus its workers if any)."""
    out: dict = {}
    for key in ("", "warm_"):
        t0, c0 = time.perf_counter(), cpu()
        n = one_pass()
        dt, used = time.perf_counter() - t0, cpu() - c0
        out.update({f"{key}samples": n, f"{key}seconds": dt, f"{key}rate": n / dt, f"{key}cpu_rate": n / used})
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


def phase_loader_encrypted(d: Path, args) -> dict:
    from hpctrain.secure import keyring

    keyring.add(enc_paths(d)[1])
    return phase_loader(enc_paths(d)[0], args)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def phase_informed(d: Path, args, runs: bool) -> dict:
    """What a user who knows HDF5 writes with torch's own tools: a map-style Dataset whose item is
    a contiguous slice of one shard, read with one h5py call per dataset, fed by
    ``DataLoader(batch_size=None, num_workers=2, persistent_workers=True)``; each worker opens the
    files it needs once and keeps them. ``runs=False``: an item is one batch, the batches in a
    uniform random order. ``runs=True``: an item is a run of one whole chunk (many batches), the
    runs in random order; the worker permutes the run's rows and the main process cuts it into
    batch views. That pays the DataLoader's per-item hand-off (pickling, a queue, shared memory)
    once per run instead of once per batch, but every batch then comes from a single chunk."""
    import h5py
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler

    from hpctrain.data.shards import Manifest, default_file_locking

    default_file_locking()
    torch.set_num_threads(1)
    m = Manifest.load(d)
    B = args.batch
    span = m.chunk_rows if runs else B

    class Slices(Dataset):
        def __init__(self) -> None:
            self.index = [(i, a, min(a + span, s.rows)) for i, s in enumerate(m.shards)
                          for a in range(0, s.rows, span)]
            self.files: dict = {}
            self.pid = -1
            self.epoch = 0  # persistent workers keep their own copy: a run's row order repeats per epoch

        def __len__(self) -> int:
            return len(self.index)

        def __getitem__(self, k):
            i, a, b = self.index[k]
            if self.pid != os.getpid():  # never reuse handles inherited across fork
                self.files, self.pid = {}, os.getpid()
            if i not in self.files:
                f = h5py.File(m.path(m.shards[i]), "r", locking=False)
                self.files[i] = (f["x"], f["y"])
            xd, yd = self.files[i]
            x, y = xd[a:b], yd[a:b]
            if runs:  # rows shuffled inside the run
                p = np.random.default_rng([k, self.epoch]).permutation(b - a)
                x, y = np.take(x, p, axis=0), np.take(y, p)
            return torch.from_numpy(x), torch.from_numpy(y)

    ds = Slices()

    class Order(Sampler):
        def __init__(self) -> None:
            self.epoch = 0

        def __len__(self) -> int:
            return len(ds)

        def __iter__(self):
            return iter(np.random.default_rng([self.epoch, 7]).permutation(len(ds)).tolist())

    sampler = Order()
    dl = DataLoader(ds, batch_size=None, sampler=sampler, num_workers=2, persistent_workers=True)
    base = rss_mb()
    workers: list[int] = []

    def cpu() -> float:
        return time.process_time() + sum(proc_cpu(p) for p in workers)

    def one_pass() -> int:
        n = 0
        it = iter(dl)
        if not workers:
            workers.extend(w.pid for w in it._workers)
        for x, y in it:
            for xb, _yb in zip(x.split(B), y.split(B)):
                n += xb.shape[0]
        sampler.epoch += 1
        return n

    # The workers start (fork) inside the first pass, as they do in a training job's first epoch.
    r = timed_passes(one_pass, base, cpu=cpu)
    wpeak = [proc_peak_mb(p) for p in workers]
    r["note"] = (f"item = a run of {span} rows (one chunk), rows permuted in the worker" if runs
                 else f"item = one batch of {span} rows, uniform random order") + \
        "; peak: main process only (workers' peak RSS incl. shared pages: " + \
        ", ".join(f"{w:.0f}" for w in wpeak) + " MiB)"
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


def phase_mixing(d: Path, args) -> dict:
    """How mixed a ShardLoader batch is: distinct source slabs (and shards) per batch, against the
    same counts for a uniform random permutation of all rows cut into batches of the same size.
    Rows are identified by the bit patterns of their first two features (unique in this data)."""
    import numpy as np

    from hpctrain.data.loader import ShardLoader
    from hpctrain.data.shards import Manifest, h5_open

    m = Manifest.load(d)
    L = ShardLoader(d, 0, 1, args.batch, shuffle=True, seed=0, prefetch=0, buffer_rows=args.buffer_rows)
    slab_rows = m.chunk_rows * L.slab_chunks
    keys, shard_of, slab_of = [], [], []
    for i, s in enumerate(m.shards):
        with h5_open(m.path(s)) as f:
            x2 = np.ascontiguousarray(f["x"][:, :2])
        keys.append(x2.view(np.uint64).ravel())
        shard_of.append(np.full(s.rows, i))
        slab_of.append(np.arange(s.rows) // slab_rows)
    keys_all = np.concatenate(keys)
    order = np.argsort(keys_all)
    sorted_keys = keys_all[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise SystemExit("bench: two rows share their first two features; cannot identify rows")
    shard_all, slab_all = np.concatenate(shard_of), np.concatenate(slab_of)
    slab_id = shard_all * (1 + int(slab_all.max())) + slab_all
    n_batches = min(args.mixing_batches, len(L))

    def counts(rows_per_batch) -> tuple[float, float]:
        sl = [len(np.unique(slab_id[r])) for r in rows_per_batch]
        sh = [len(np.unique(shard_all[r])) for r in rows_per_batch]
        return float(np.mean(sl)), float(np.mean(sh))

    ours = []
    for k, (x, _y) in enumerate(L.iter_numpy(0)):
        if k >= n_batches:
            break
        key = np.ascontiguousarray(x[:, :2]).view(np.uint64).ravel()
        ours.append(order[np.searchsorted(sorted_keys, key)])
    perm = np.random.default_rng(0).permutation(len(keys_all))
    uniform = [perm[k * args.batch:(k + 1) * args.batch] for k in range(n_batches)]
    o_sl, o_sh = counts(ours)
    u_sl, u_sh = counts(uniform)
    return {"batches": n_batches, "slab_rows": slab_rows, "slabs": int(len(np.unique(slab_id))),
            "shards": len(m.shards), "buffer_rows": L.buffer_rows, "loader_slabs_per_batch": o_sl,
            "uniform_slabs_per_batch": u_sl, "loader_shards_per_batch": o_sh, "uniform_shards_per_batch": u_sh}


PHASES = {"a": phase_raw, "b": phase_loader, "c": phase_naive, "f": phase_loader_encrypted,
          "d": lambda d, a: phase_informed(d, a, runs=False), "e": lambda d, a: phase_informed(d, a, runs=True),
          "m": phase_mixing}


NAMES = {"a": "(a) raw slab reads (limit)", "b": "(b) ShardLoader, shuffled",
         "d": "(d) informed peer, batch order", "e": "(e) informed peer, runs",
         "c": "(c) naive per-sample Dataset", "f": "(f) ShardLoader, encrypted"}


def best_row(rows: list[dict], key: str) -> dict:
    """The whole row of the one process whose ``key`` was highest (never a column-wise maximum)."""
    return max(rows, key=lambda r: r[key])


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
    ap.add_argument("--raw-slab-chunks", type=int, default=32,
                    help="chunks per read of the limit (a); 32: a whole default shard per read")
    ap.add_argument("--raw-cache-mb", type=float, default=0.0,
                    help="HDF5 chunk cache of the limit (a) in MiB (default 0: off; -1: HDF5's default)")
    ap.add_argument("--naive-samples", type=int, default=20_000, help="subset size timed for (c)")
    ap.add_argument("--mixing-batches", type=int, default=2000, help="batches of epoch 0 the mixing measure reads")
    ap.add_argument("--repeat", type=int, default=5,
                    help="rounds of (a), (b), (d), (e), each a fresh process; the fastest process of each is shown")
    ap.add_argument("--peer-d-rounds", type=int, default=2, help="rounds that include the slow peer (d)")
    ap.add_argument("--fresh", action="store_true", help="rewrite the data even if it is there")
    ap.add_argument("--json", help="also write every process's figures here")
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
    write_data(enc_paths(d)[0], args.gb, args.features, args.shards, args.compression, key=bench_key(d))
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores",
          flush=True)
    runs: dict[str, list[dict]] = {}
    passthru = [a for a in sys.argv[1:] if a not in ("--fresh",)]
    if "--json" in passthru:
        k = passthru.index("--json")
        del passthru[k:k + 2]
    # Every round runs each contender once, each in a fresh process and in a rotated order, so all
    # see the same (shared-machine) load; then (c) once, and the mixing measure.
    timed = ["a", "b", "d", "e", "f"]
    # (d) is an order of magnitude slower than the others (a pass takes ~30 s): it runs in the
    # first --peer-d-rounds rounds only.
    order = [(p, i) for i in range(args.repeat) for p in timed[i % len(timed):] + timed[:i % len(timed)]
             if p != "d" or i < args.peer_d_rounds] + [("c", 0), ("m", 0)]
    for p, i in order:
        out = subprocess.run([sys.executable, __file__, *passthru, "--phase", p, "--epoch", str(i)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"phase {p} failed:\n{out.stderr}", file=sys.stderr)
            return 1
        runs.setdefault(p, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    first = {p: best_row(runs[p], "rate") for p in timed + ["c"]}
    warm = {p: best_row(runs[p], "warm_rate") for p in timed}
    print(f"\nfirst pass of each process; per contender the fastest of its processes ({args.repeat}; (d): "
          f"{min(args.repeat, args.peer_d_rounds)}; (c): 1), whole row (its second pass is shown beside it):")
    for p in ("a", "b", "f", "d", "e", "c"):
        r = first[p]
        second = f"{r['warm_rate']:>11,.0f}" if "warm_rate" in r else f"{'':>11}"
        print(f"{NAMES[p]:32s} {r['rate']:>11,.0f} samples/s {r['cpu_rate']:>11,.0f} per CPU-s  2nd pass "
              f"{second}  peak +{r['peak_mb']:6.1f} MiB  ({r['note']})", flush=True)
    print("second pass: the process with the fastest second pass, whole row:")
    for p in timed:
        r = warm[p]
        print(f"{NAMES[p]:32s} {r['warm_rate']:>11,.0f} samples/s {r['warm_cpu_rate']:>11,.0f} per CPU-s")
    peer = max(("d", "e"), key=lambda p: first[p]["rate"])
    wpeer = max(("d", "e"), key=lambda p: warm[p]["warm_rate"])
    ab, wab = first["b"]["rate"] / first["a"]["rate"], warm["b"]["warm_rate"] / warm["a"]["warm_rate"]
    bp, wbp = first["b"]["rate"] / first[peer]["rate"], warm["b"]["warm_rate"] / warm[wpeer]["warm_rate"]
    bc = first["b"]["rate"] / first["c"]["rate"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\n(b)/(a) first pass  = {ab:.2f} wall, {first['b']['cpu_rate'] / first['a']['cpu_rate']:.2f} per CPU-s  "
          f"(target >= 0.7: {verdict(ab >= 0.7)})")
    print(f"(b)/(a) second pass = {wab:.2f} wall, {warm['b']['warm_cpu_rate'] / warm['a']['warm_cpu_rate']:.2f} "
          f"per CPU-s  ({verdict(wab >= 0.7)})")
    print(f"(b)/strongest informed peer {NAMES[peer]}: first pass {bp:.2f}  (target > 1: {verdict(bp > 1)}); "
          f"second pass vs {NAMES[wpeer]}: {wbp:.2f} ({verdict(wbp > 1)})")
    print(f"(b)/(c) = {bc:,.0f} wall  (target >= 100: {verdict(bc >= 100)})")
    fb, wfb = first["f"]["rate"] / first["b"]["rate"], warm["f"]["warm_rate"] / warm["b"]["warm_rate"]
    print(f"(f)/(b) encrypted/plaintext = {fb:.2f} first pass, {wfb:.2f} second pass  "
          f"(target >= 0.7: {verdict(fb >= 0.7)}, {verdict(wfb >= 0.7)})")
    fbs = " ".join(f"{rf['rate'] / rb['rate']:.2f}/{rf['warm_rate'] / rb['warm_rate']:.2f}"
                   for rb, rf in zip(runs["b"], runs["f"]))
    print(f"(f)/(b) of each round, first/second pass: {fbs}")
    for p in ("a", "b", "f", "d", "e"):
        pairs = " ".join(f"{r['rate']:,.0f}/{r['warm_rate']:,.0f}" for r in runs[p])
        print(f"every process of {NAMES[p]}, samples/s first/second pass: {pairs}")
    ratios = " ".join(f"{rb['rate'] / ra['rate']:.2f}/{rb['warm_rate'] / ra['warm_rate']:.2f}"
                      for ra, rb in zip(runs["a"], runs["b"]))
    print(f"(b)/(a) of each round, first/second pass: {ratios}")
    print("per CPU-s counts every thread's (and (d)/(e): every worker's) CPU time")
    print(f"(b) peak +{first['b']['peak_mb']:.1f} MiB (largest of all (b) processes: "
          f"+{max(r['peak_mb'] for r in runs['b']):.1f}) vs stated bound {first['b']['bound_mb']:.1f} MiB")
    mx = runs["m"][0]
    print(f"\nbatch mixing, epoch 0, world size 1, first {mx['batches']} batches of {args.batch}: distinct source "
          f"slabs ({mx['slab_rows']} rows, {mx['slabs']} in all) per batch: ShardLoader "
          f"{mx['loader_slabs_per_batch']:.1f}, uniform permutation {mx['uniform_slabs_per_batch']:.1f}; "
          f"distinct shards (of {mx['shards']}) per batch: {mx['loader_shards_per_batch']:.1f} vs "
          f"{mx['uniform_shards_per_batch']:.1f}  (shuffle buffer {mx['buffer_rows']} rows)")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
