#!/usr/bin/env python
"""Overhead of the per-rank monitor: training with monitor.enabled on vs off, side by side.

    python scripts/bench_monitor.py                    # 3 pairs of runs, default interval (5 s)
    python scripts/bench_monitor.py --pairs 5 --epochs 3

One process, one rank (mpi backend), a small MLP on Gaussian blobs written once to a temp dir.
Each pair trains the same config twice, once with monitoring and once without, in alternating
order (on/off, then off/on, ...) after one discarded warm-up run, so drift in the machine's load
hits both sides alike and neither pays the process's one-off costs. For each
run: the wall time and the process's CPU time (all its threads, the sampler's included) of
train() per optimizer step. The end-to-end overhead is the median over pairs of (on - off) / off;
CPU time is the steadier of the two on a machine that other jobs load.

On a shared machine that difference is within the noise, so the script also measures the two
costs monitoring adds, each over many calls: the per-step bookkeeping (``add_step``: the four
perf_counter pairs are in the trainer either way, this is the lock and the sums) and one sample
(psutil reads, one JSON line appended, the alert rules). The estimate at the default interval is
    add_step / step time + sample / interval_s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def blobs(out: Path, rows: int, features: int, classes: int = 4) -> Path:
    import numpy as np

    from hpctrain.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(classes, features))
    with ShardWriter(out, feature_names=[f"f{i}" for i in range(features)], sample_shape=(features,),
                     rows_per_shard=4096, classes=list(range(classes))) as w:
        for split, n in (("train", rows), ("val", rows // 10)):
            y = rng.integers(0, classes, n)
            x = (centers[y] + rng.normal(0, 1.0, size=(n, features))).astype(np.float32)
            w.add(x, y.astype(np.int64), split=split)
    return out


def one_run(data: Path, run_dir: Path, *, monitor: bool, epochs: int, interval_s: float) -> dict:
    from hpctrain.monitor.report import read_samples, summarize
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    cfg = load_config({
        "run": {"name": "bench", "dir": str(run_dir), "epochs": epochs, "seed": 0},
        "data": {"dir": str(data), "batch_size": 64, "prefetch": 2, "val_split": None},
        "model": {"kind": "mlp", "hidden": [256, 256]},
        "checkpoint": {"every_epoch": False, "every_steps": 0},
        "logging": {"plots": False, "progress": False, "every_steps": 50},
        "comm": {"backend": "mpi"},
        "monitor": {"enabled": monitor, "interval_s": interval_s},
    })
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"wall_s": wall, "steps": res.step, "s_per_step": wall / res.step, "cpu_per_step": cpu / res.step}
    if monitor:
        s = summarize(0, read_samples(run_dir)[0])
        out["samples"] = s.samples
        out["step_s"] = s.mean["step_s"]
    return out


def micro_costs(tmp: Path, interval_s: float) -> tuple[float, float]:
    """(seconds per add_step, seconds per sample)."""
    from hpctrain.monitor.sampler import RankMonitor
    from hpctrain.train.config import MonitorConfig

    mon = RankMonitor(MonitorConfig(interval_s=3600.0), tmp / "micro", rank=0, node="bench")
    mon.start()  # the thread sleeps for an hour: only the calls below run
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        mon.add_step(i, 0.01, 0.001, 0.002, 0.0001)
    per_step = (time.perf_counter() - t0) / n
    k = 300
    t0 = time.perf_counter()
    for i in range(k):
        mon.add_step(i, 0.01, 0.001, 0.002, 0.0001)
        mon.sample()
    per_sample = (time.perf_counter() - t0) / k - per_step
    mon.close()
    return per_step, per_sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--interval", type=float, default=5.0, help="monitor.interval_s (default: the default, 5 s)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="hpct-bench-monitor-"))
    data = blobs(tmp / "blobs", args.rows, args.features)
    print(f"data: {args.rows} rows x {args.features} features; MLP [256, 256], batch 64, {args.epochs} epoch(s), "
          f"1 rank, monitor.interval_s={args.interval:g}", flush=True)
    # the first training in a process pays one-off costs (MPI start, imports, allocator warm-up)
    one_run(data, tmp / "warm-up", monitor=True, epochs=1, interval_s=args.interval)
    rows = []
    for p in range(args.pairs):
        order = (True, False) if p % 2 == 0 else (False, True)
        got = {}
        for on in order:
            got[on] = one_run(data, tmp / f"run-{p}-{'on' if on else 'off'}", monitor=on, epochs=args.epochs,
                              interval_s=args.interval)
        ratio = (got[True]["s_per_step"] - got[False]["s_per_step"]) / got[False]["s_per_step"]
        cratio = (got[True]["cpu_per_step"] - got[False]["cpu_per_step"]) / got[False]["cpu_per_step"]
        rows.append((got[True], got[False], ratio, cratio))
        print(f"pair {p}: wall on {got[True]['s_per_step'] * 1e3:.3f} / off {got[False]['s_per_step'] * 1e3:.3f} "
              f"ms/step ({ratio:+.2%}); CPU on {got[True]['cpu_per_step'] * 1e3:.3f} / off "
              f"{got[False]['cpu_per_step'] * 1e3:.3f} ms/step ({cratio:+.2%}); {got[True]['samples']} sample(s)",
              flush=True)
    per_step, per_sample = micro_costs(tmp, args.interval)
    step_s = statistics.median(r[0]["step_s"] for r in rows)
    est = per_step / step_s + per_sample / args.interval
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| steps per run | {rows[0][0]['steps']} |")
    print(f"| median step time, monitor on (its own samples) | {step_s * 1e3:.3f} ms |")
    print(f"| median wall per step, on / off | {statistics.median(r[0]['s_per_step'] for r in rows) * 1e3:.3f} / "
          f"{statistics.median(r[1]['s_per_step'] for r in rows) * 1e3:.3f} ms |")
    print(f"| end-to-end overhead in wall time, median of {len(rows)} pairs (on - off) / off | "
          f"{statistics.median(r[2] for r in rows):+.2%} (pairs: {', '.join(f'{r[2]:+.2%}' for r in rows)}) |")
    print(f"| median CPU time per step (all threads), on / off | "
          f"{statistics.median(r[0]['cpu_per_step'] for r in rows) * 1e3:.3f} / "
          f"{statistics.median(r[1]['cpu_per_step'] for r in rows) * 1e3:.3f} ms |")
    print(f"| end-to-end overhead in CPU time, median of {len(rows)} pairs | "
          f"{statistics.median(r[3] for r in rows):+.2%} (pairs: {', '.join(f'{r[3]:+.2%}' for r in rows)}) |")
    print(f"| add_step per step | {per_step * 1e6:.2f} us |")
    print(f"| one sample (psutil, JSON line, alert rules) | {per_sample * 1e6:.0f} us |")
    print(f"| estimated overhead at interval {args.interval:g} s: add_step / step + sample / interval | "
          f"{est:.3%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
