"""Small end-to-end checks of the MPI/Horovod stack, runnable on any number of ranks.

    hpctrain launch -n 2 -- python -m hpctrain.selftest allreduce

Each rank contributes ``rank + 1`` in every element; the sum over N ranks is
N(N+1)/2. Rank 0 prints one line; any rank with a wrong result exits non-zero, which
makes mpirun fail the whole job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def allreduce(size: int = 1 << 20, repeat: int = 3) -> dict:
    import horovod.torch as hvd
    import torch

    hvd.init()
    rank, world = hvd.rank(), hvd.size()
    x = torch.full((size,), float(rank + 1), dtype=torch.float32)
    want = world * (world + 1) / 2
    hvd.allreduce(x, op=hvd.Sum, name="warmup")
    t0 = time.perf_counter()
    for i in range(repeat):
        out = hvd.allreduce(x, op=hvd.Sum, name=f"selftest.{i}")
    dt = (time.perf_counter() - t0) / repeat
    ok = bool(torch.all(out == want))
    result = {"check": "horovod_allreduce", "ok": ok, "world_size": world, "rank": rank,
              "expected": want, "got_min": float(out.min()), "got_max": float(out.max()),
              "mpi_enabled": bool(hvd.mpi_enabled()), "bytes": size * 4, "seconds": dt}
    return result


def job_facts(a: int = 0, b: int = 0) -> dict:
    """What a batch job sees of itself; submitted by the demo and the Slurm tests."""
    import os
    import socket

    from hpctrain.env import rank_info

    info = rank_info()
    return {"sum": a + b, "host": socket.gethostname(), "job_id": info.job_id, "rank": info.rank,
            "world_size": info.world_size, "launcher": info.launcher, "ntasks": os.environ.get("SLURM_NTASKS")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpctrain.selftest")
    p.add_argument("check", choices=["allreduce"])
    p.add_argument("--elements", type=int, default=1 << 20)
    args = p.parse_args(argv)
    res = allreduce(args.elements)
    if res["rank"] == 0 or not res["ok"]:
        print(json.dumps(res), flush=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
