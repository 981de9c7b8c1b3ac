"""Which :class:`~hpctrain.comm.collective.Collective` a program outside training uses.

Apart from collective.py because it picks a backend class (comm/mpi.py), which itself
builds on collective.py.
"""

from __future__ import annotations

from typing import Any

from hpctrain.comm.collective import Collective, LocalCollective


def world() -> Collective:
    """COMM_WORLD's collectives when this process is one of several ranks, else a local one."""
    from hpctrain.env import rank_info

    if rank_info().world_size > 1:
        from hpctrain.comm.mpi import MpiComm

        return MpiComm()
    return LocalCollective()


def as_collective(comm: Any) -> Collective:
    """A :class:`Collective` for what a Python API caller passed as ``comm``: None (one rank),
    a Collective, or an mpi4py communicator (wrapped)."""
    if comm is None:
        return LocalCollective()
    if isinstance(comm, Collective):
        return comm
    if callable(getattr(comm, "Get_rank", None)) and callable(getattr(comm, "Allreduce", None)):
        from hpctrain.comm.mpi import MpiComm

        return MpiComm(comm)
    from hpctrain.errors import HpctrainError

    raise HpctrainError(f"comm: got {type(comm).__name__}, expected None, an hpctrain.comm.Collective or an "
                        "mpi4py communicator (e.g. MPI.COMM_WORLD)")
