"""Where the quality commands' collectives used to live; kept so existing imports work.

The collectives are :mod:`hpctrain.comm.collective`'s and the abort path is
:func:`hpctrain.comm.failfast.run_collective`.
"""

from __future__ import annotations

from hpctrain.comm.collective import LocalCollective as LocalComm
from hpctrain.comm.world import world as world_comm
from hpctrain.comm.failfast import run_collective
from hpctrain.comm.mpi import MpiComm

__all__ = ["LocalComm", "MpiComm", "run_collective", "world_comm"]
