"""The few collectives the quality statistics need, behind one small interface.

``LocalComm`` is the single-process case; ``MpiComm`` wraps an mpi4py communicator.
Statistics code calls only these methods, so the same code runs on one rank or many and
is unit-tested without MPI.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np


class LocalComm:
    rank = 0
    size = 1

    def allreduce_sum(self, a: np.ndarray) -> np.ndarray:
        return np.array(a, copy=True)

    def gather(self, obj: Any) -> list | None:
        return [obj]

    def bcast(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        sys.exit(code)


class MpiComm:
    def __init__(self, comm):
        self._c = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_sum(self, a: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        a = np.ascontiguousarray(a)
        out = np.empty_like(a)
        self._c.Allreduce(a, out, op=MPI.SUM)
        return out

    def gather(self, obj: Any) -> list | None:
        return self._c.gather(obj, root=0)

    def bcast(self, obj: Any) -> Any:
        return self._c.bcast(obj, root=0)

    def barrier(self) -> None:
        self._c.Barrier()

    def abort(self, code: int) -> None:
        self._c.Abort(code)


def world_comm():
    """MpiComm(COMM_WORLD) when this process was started as one of several ranks, else LocalComm."""
    from hpctrain.env import rank_info

    if rank_info().world_size > 1:
        from mpi4py import MPI

        return MpiComm(MPI.COMM_WORLD)
    return LocalComm()


def run_collective(comm, fn: Callable[[], int]) -> int:
    """Run ``fn`` on every rank. On one rank, errors propagate normally (the CLI prints an
    HpctrainError as one line). On several ranks an error may be seen by one rank only (a
    corrupt shard is read by one rank), and the others would wait in a collective forever,
    so the rank prints the error and aborts the whole job: exit 2 for bad input, 1 otherwise."""
    from hpctrain.errors import HpctrainError

    try:
        return fn()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001
        if comm.size <= 1:
            raise
        if isinstance(e, HpctrainError):
            print(f"rank {comm.rank}: error: {e}", file=sys.stderr, flush=True)
            comm.abort(2)
        import traceback

        traceback.print_exc()
        print(f"rank {comm.rank}: aborting all ranks after an unexpected error", file=sys.stderr, flush=True)
        comm.abort(1)
        raise
