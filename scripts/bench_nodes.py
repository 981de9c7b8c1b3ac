#!/usr/bin/env python3
"""Allreduce between two Slurm nodes against two ranks on one node, side by side in one run.

    scripts/local-cluster.sh start --nodes 2 && export SLURM_CONF=$PWD/.cluster-2node/slurm.conf
    python scripts/bench_nodes.py [--mb 16] [--rounds 3] [--iters 12]

Each round runs the same mpi4py program twice under ``srun --mpi=pmix``: once as one rank on
each of two nodes (TCP between the nodes' network namespaces, on the local 2-node cluster),
once as two ranks on one node (shared memory). The program times ``--iters`` in-place
Allreduce calls of ``--mb`` MB of float32 after a barrier each, and prints the median of all
but the first two. The layouts alternate round by round so a change of load hits both; the
table gives each layout's median over the rounds and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

PROGRAM = r"""
import sys, time
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
b = np.ones(int(float(sys.argv[1]) * (1 << 20)) // 4, np.float32)
ts = []
for _ in range(int(sys.argv[2])):
    c.Barrier()
    t = time.perf_counter()
    c.Allreduce(MPI.IN_PLACE, b)
    ts.append(time.perf_counter() - t)
if c.rank == 0:
    print("MEDIAN_S", sorted(ts[2:])[len(ts[2:]) // 2], MPI.Get_processor_name())
"""

LAYOUTS = {"2 nodes x 1 rank": ["-N", "2", "--ntasks-per-node=1"], "1 node x 2 ranks": ["-N", "1", "-n", "2"]}


def run_once(layout: list[str], mb: float, iters: int, partition: str | None) -> float:
    env = dict(os.environ, OMPI_MCA_btl_vader_single_copy_mechanism="none")
    argv = ["srun", *layout, "--mpi=pmix", "-t", "5", *(["-p", partition] if partition else []),
            sys.executable, "-c", PROGRAM, str(mb), str(iters)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("MEDIAN_S")]
    if p.returncode != 0 or not lines:
        sys.exit(f"bench_nodes: {' '.join(argv[:8])} ... failed (exit {p.returncode}):\n{p.stdout}{p.stderr}\n"
                 "start the 2-node cluster (scripts/local-cluster.sh start --nodes 2) and export its SLURM_CONF")
    return float(lines[0].split()[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0, help="buffer size in MB (float32)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs both layouts")
    ap.add_argument("--iters", type=int, default=12, help="allreduce calls per run (the first two are not counted)")
    ap.add_argument("--partition", default=None)
    args = ap.parse_args(argv)
    if args.mb <= 0 or args.rounds < 1 or args.iters < 3:
        ap.error("--mb must be > 0, --rounds >= 1 and --iters >= 3")
    times: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    for r in range(args.rounds):
        order = list(LAYOUTS) if r % 2 == 0 else list(reversed(LAYOUTS))
        for name in order:
            times[name].append(run_once(LAYOUTS[name], args.mb, args.iters, args.partition))
    print(f"# {args.mb:g} MB float32 in-place Allreduce, median of {args.iters - 2} calls per run, "
          f"median of {args.rounds} rounds; load average at end {os.getloadavg()[0]:.2f}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:<20}{t * 1e3:9.2f} ms{args.mb * 2 ** 20 / t / 1e9:9.2f} GB/s (algorithm bandwidth)  "
              f"runs: {', '.join(f'{x * 1e3:.1f}' for x in times[name])} ms")
    print(f"2 nodes / 1 node: {med['2 nodes x 1 rank'] / med['1 node x 2 ranks']:.1f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
