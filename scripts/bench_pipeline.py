#!/usr/bin/env python
"""Pipeline parallelism on 2 stages: throughput and measured bubble against the theory, side by side.

    hpctrain launch -n 2 -- python scripts/bench_pipeline.py [--micro 1,2,4,8] [--schedule gpipe] [--json out.json]

The model is an MLP of --layers Linear(--width, --width) + ReLU blocks and a Linear head (equal
blocks, so the parameter-count split is also a compute-balanced split), fed in-memory batches
of --batch rows. Each rank holds one stage (hpctrain.train.pipeline_stage.PipelineRuntime, the
trainer's own runtime: torch.distributed.pipelining over gloo, 1 torch thread per rank).

For each microbatch count M, one timed pass is --steps schedule steps (forward and backward of
every microbatch; no optimizer step, which does not depend on M). Every repeat runs every M once,
in a rotated order, so a change of machine load hits all of them alike; the tables show medians
over --repeats.

* throughput: batch rows per second of wall time, wall = the slower stage's time for the steps;
* measured bubble of a stage: 1 - busy / wall, where busy is the time the stage spends inside
  ``PipelineStage.forward_one_chunk`` and ``backward_one_chunk`` (its own compute, the loss on
  the last stage included; time spent waiting for or moving activations is not busy);
* theoretical bubble: (S - 1) / (M + S - 1) for S = 2 stages of equal cost and free communication.

The last two columns time the whole, unsplit model on rank 0 alone (rank 1 waits in a barrier),
forward and backward of the same batch cut into the same M chunks (gradients accumulated): the
throughput a pipeline must beat to be worth it on the same cores when the model fits one device,
and how much of a pipeline's slowdown at large M is the smaller matrix products, not the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--micro", default="1,2,4,8", help="microbatch counts M (each must divide --batch)")
    p.add_argument("--schedule", choices=("gpipe", "1f1b"), default="gpipe")
    p.add_argument("--batch", type=int, default=256, help="rows per step")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4, help="hidden Linear+ReLU blocks (the head is one more block)")
    p.add_argument("--steps", type=int, default=10, help="schedule steps per timed pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the figures here (rank 0)")
    return p.parse_args()


def build(width: int, layers: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods: list = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    mods.append(nn.Linear(width, 10))
    return nn.Sequential(*mods)


def timed_stage(rt) -> list[float]:
    """Wrap the stage's compute methods so their time adds up in the returned one-item list."""
    busy = [0.0]
    for name in ("forward_one_chunk", "backward_one_chunk"):
        orig = getattr(rt.stage, name)

        def wrapper(*a, _orig=orig, **k):
            t = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                busy[0] += time.perf_counter() - t
        setattr(rt.stage, name, wrapper)
    return busy


def main() -> int:
    args = parse()
    import numpy as np
    import torch

    from hpctrain.comm import init_comm
    from hpctrain.train.pipeline import Layout, bubble_fraction
    from hpctrain.train.pipeline_stage import PipelineRuntime

    torch.set_num_threads(1)
    comm = init_comm("torch", timeout_s=120)
    if comm.size != 2:
        print(f"bench_pipeline: needs 2 ranks (one per stage), got {comm.size}; run it as "
              "'hpctrain launch -n 2 -- python scripts/bench_pipeline.py'", file=sys.stderr)
        return 2
    micro = [int(m) for m in args.micro.split(",")]
    bad = [m for m in micro if args.batch % m]
    if bad:
        print(f"bench_pipeline: --micro {bad} do not divide --batch {args.batch}", file=sys.stderr)
        return 2
    rank = comm.rank
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.width, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    loss_fn = torch.nn.CrossEntropyLoss()
    runtimes = {}
    for m in micro:
        rt = PipelineRuntime(model=build(args.width, args.layers), layout=Layout(world_size=2, stages=2, rank=rank),
                             device=torch.device("cpu"), microbatches=m, schedule=args.schedule, criterion=loss_fn)
        runtimes[m] = (rt, timed_stage(rt))
        for _ in range(2):  # warm-up: shape inference, allocator
            rt.train_batch(x, y)
    full = build(args.width, args.layers)

    def unsplit_pass(m: int = 1) -> float:
        comm.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            for _ in range(args.steps):
                full.zero_grad(set_to_none=False)
                for xc, yc in zip(x.chunk(m), y.chunk(m)):
                    (loss_fn(full(xc), yc) / m).backward()
        dt = time.perf_counter() - t0
        comm.barrier()
        return dt

    unsplit_pass()
    walls: dict = {m: [] for m in micro}
    busys: dict = {m: [] for m in micro}
    ref: dict = {m: [] for m in micro}
    for rep in range(args.repeats):
        order = micro[rep % len(micro):] + micro[:rep % len(micro)]
        for m in order:
            rt, busy = runtimes[m]
            comm.barrier()
            busy[0] = 0.0
            t0 = time.perf_counter()
            for _ in range(args.steps):
                rt.train_batch(x, y)
            wall = time.perf_counter() - t0
            both = comm.allreduce(np.array([wall, 0.0]), op="max")  # the slower stage's wall time
            mine = np.zeros(2)
            mine[rank] = busy[0]
            busy_both = comm.allreduce(mine)
            walls[m].append(float(both[0]))
            busys[m].append([float(b) for b in busy_both])
            ref[m].append(float(comm.allreduce(np.array([unsplit_pass(m)]), op="max")[0]))
    if rank == 0:
        rows = []
        for m in micro:
            per_rep = [(w, b) for w, b in zip(walls[m], busys[m])]
            wall = statistics.median(w for w, _ in per_rep)
            bub = [statistics.median(1 - b[s] / w for w, b in per_rep) for s in range(2)]
            ref_wall = statistics.median(ref[m])
            rows.append({"M": m, "samples_per_s": args.steps * args.batch / wall, "step_ms": 1e3 * wall / args.steps,
                         "unsplit_samples_per_s": args.steps * args.batch / ref_wall,
                         "unsplit_step_ms": 1e3 * ref_wall / args.steps,
                         "bubble_stage0": bub[0], "bubble_stage1": bub[1], "bubble_mean": (bub[0] + bub[1]) / 2,
                         "bubble_theory": bubble_fraction(2, m)})
        print(f"# 2 stages, schedule {args.schedule}, MLP {args.layers} x Linear({args.width}, {args.width}) + "
              f"head, batch {args.batch}, {args.steps} steps x {args.repeats} repeats (medians)")
        print("| M | samples/s | ms/step | bubble stage 0 | bubble stage 1 | bubble mean | theory (S-1)/(M+S-1) "
              "| unsplit 1 rank, M chunks: samples/s | ms/step |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['M']} | {r['samples_per_s']:,.0f} | {r['step_ms']:.2f} | {r['bubble_stage0']:.3f} "
                  f"| {r['bubble_stage1']:.3f} | {r['bubble_mean']:.3f} | {r['bubble_theory']:.3f} "
                  f"| {r['unsplit_samples_per_s']:,.0f} | {r['unsplit_step_ms']:.2f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    comm.barrier()
    comm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
