#!/usr/bin/env python
"""Gradient-exchange bandwidth and training weak scaling, side by side in one run.

    hpctrain launch -n 2 -- python scripts/bench_comm.py [--sizes 1,4,16,64] [--json out.json]

Part 1, allreduce of float32 buffers (sizes in MB) through:
  raw-mpi4py   Allreduce(send, recv) on numpy buffers: the limit;
  mpi          hpctrain's mpi backend: the gradient exchange of a model whose grads total the
               buffer (8 tensors), averaged in place (what a training step pays);
  horovod      hvd.allreduce_ (average) at this process's HOROVOD_* settings;
  torch-gloo   torch.distributed.all_reduce + divide.
  raw-inplace  Allreduce(IN_PLACE, buf): the other raw form; the faster raw time is the limit.
Each row: median time over repeats (slowest rank), bus bandwidth, and the ratio of the limit
to this path's time (1.0 = as fast as raw MPI).

Part 2, training throughput of the demo CNN on 8x8 inputs (in-memory batches, so the
file system is not measured): 1 rank with 1 thread (the other rank sleeps, it does not spin),
then 2 ranks with 1 thread each through the mpi and horovod backends. Weak-scaling
efficiency = samples/s on 2 ranks / (2 x samples/s on 1 rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def sleep_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning, so an idle rank leaves its core alone."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def timed(fn, repeats: int, comm) -> float:
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    # The slowest rank defines a collective's time.
    return float(comm.allreduce(statistics.median(out), op=__import__("mpi4py").MPI.MAX))


def bench_allreduce(sizes_mb, comm, size):
    from hpctrain.comm import shared_comm

    backends = {"mpi": shared_comm("mpi"), "horovod": shared_comm("horovod"), "torch-gloo": shared_comm("torch")}
    rows = []
    for mb in sizes_mb:
        rows += bench_size(mb, comm, size, backends)
    return rows


def bench_size(mb, comm, size, backends):
    import torch

    MPI = __import__("mpi4py").MPI
    n = int(mb * (1 << 20)) // 4
    reps = 30 if mb <= 4 else (20 if mb <= 16 else 10)
    send = np.random.default_rng(comm.rank).random(n, dtype=np.float32)
    recv = np.empty_like(send)
    res = {"raw-mpi4py": timed(lambda: comm.Allreduce(send, recv, op=MPI.SUM), reps, comm)}
    res["raw-inplace"] = timed(lambda: comm.Allreduce(MPI.IN_PLACE, recv, op=MPI.SUM), reps, comm)
    limit = min(res.values())  # the faster raw call is the limit the exchange is compared with

    # mpi backend: the real exchange object on a model with 8 parameters totalling n floats;
    # the grads are views into the bucket, so synchronize() is allreduce in place + average.
    model = torch.nn.Module()
    for i, part in enumerate(np.array_split(send, 8)):
        model.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(len(part))))
    ex = backends["mpi"].gradient_exchange(model, torch.optim.SGD(model.parameters(), lr=0.0))
    for prm, part in zip(model.parameters(), np.array_split(send, 8)):
        prm.grad.copy_(torch.from_numpy(part))
    res["mpi"] = timed(ex.synchronize, reps, comm)
    ex.close()
    t = torch.from_numpy(send.copy())
    hvd = backends["horovod"].hvd
    res["horovod"] = timed(lambda: hvd.allreduce_(t, op=hvd.Average, name=f"b{mb}"), reps, comm)
    tg = torch.from_numpy(send.copy())
    res["torch-gloo"] = timed(lambda: backends["torch-gloo"].allreduce_mean_(tg), reps, comm)
    rows = []
    for name, sec in res.items():
        nbytes = n * 4
        busbw = 2 * (size - 1) / size * nbytes / sec / 1e9
        rows.append({"size_mb": mb, "path": name, "ms": sec * 1e3, "busbw_GBps": busbw,
                     "ratio_to_raw": limit / sec})
    return rows


def bench_training(comm, steps: int):
    import torch

    from hpctrain.comm import shared_comm
    from hpctrain.train.models import build_model

    torch.set_num_threads(1)
    batch = 32
    g = torch.Generator().manual_seed(comm.rank)
    xs = [torch.randn(batch, 1, 8, 8, generator=g) for _ in range(8)]
    ys = [torch.randint(0, 10, (batch,), generator=g) for _ in range(8)]

    def run(exchange, model, n_steps):
        t = time.perf_counter()
        for i in range(n_steps):
            exchange.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[i % 8]), ys[i % 8]).backward()
            exchange.step()
        return time.perf_counter() - t

    def fresh(backend):
        torch.manual_seed(0)
        model = build_model("cnn", (1, 8, 8), 10, channels=[16, 32])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, shared_comm(backend).gradient_exchange(model, opt)

    out = {}
    # 1 rank: rank 0 alone with the plain optimizer; rank 1 sleeps in a non-spinning barrier.
    if comm.rank == 0:
        model = build_model("cnn", (1, 8, 8), 10, channels=[16, 32])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        class Plain:
            def zero_grad(self):
                opt.zero_grad()

            def step(self):
                opt.step()

        run(Plain(), model, 20)
        out["1 rank"] = steps * batch / run(Plain(), model, steps)
    sleep_barrier(comm)
    for backend in ("mpi", "mpi-blocking", "horovod"):
        model, ex = fresh(backend.split("-")[0])
        if backend == "mpi-blocking":
            ex.close()  # no hooks: one blocking Allreduce per bucket at step(), no overlap with backward
        run(ex, model, 20)
        comm.Barrier()
        sec = comm.allreduce(run(ex, model, steps), op=__import__("mpi4py").MPI.MAX)
        out[f"2 ranks ({backend})"] = steps * batch * comm.size / sec
        ex.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,16,64", help="buffer sizes in MB")
    ap.add_argument("--steps", type=int, default=300, help="training steps per throughput measurement")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--json", help="also write the results here (rank 0)")
    args = ap.parse_args()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.size < 2:
        print("run on 2 or more ranks: hpctrain launch -n 2 -- python scripts/bench_comm.py", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    sizes = [float(s) for s in args.sizes.split(",")]
    rows = bench_allreduce(sizes, comm, comm.size)
    train = None if args.skip_training else bench_training(comm, args.steps)
    if comm.rank == 0:
        hv = {k: v for k, v in os.environ.items() if k.startswith("HOROVOD_")}
        print(f"# allreduce, {comm.size} ranks, float32; HOROVOD settings: {hv or 'defaults'}")
        print(f"{'MB':>6} {'path':<12} {'ms':>9} {'busbw GB/s':>11} {'x limit':>7}")
        for r in rows:
            print(f"{r['size_mb']:>6g} {r['path']:<12} {r['ms']:>9.3f} {r['busbw_GBps']:>11.2f} "
                  f"{r['ratio_to_raw']:>7.2f}")
        if train:
            base = train["1 rank"]
            print("\n# training throughput, demo CNN (1x8x8 inputs, batch 32 per rank, 1 torch thread per rank)")
            for k, v in train.items():
                eff = "" if k == "1 rank" else f"  weak-scaling efficiency {v / (comm.size * base):.2f}"
                print(f"{k:<18} {v:>10.0f} samples/s{eff}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"allreduce": rows, "training": train}, f, indent=2)
    comm.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
