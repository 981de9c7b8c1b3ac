"""The one collective layer (:mod:`hpctrain.comm.collective`, :func:`world`), the one abort path
(:mod:`hpctrain.comm.failfast`) and gradient exchange behind one small interface
(:mod:`hpctrain.comm.base`)."""

from __future__ import annotations

import os
from typing import Mapping

from hpctrain.comm.base import BACKENDS, Comm, GradientExchange
from hpctrain.comm.collective import Collective, LocalCollective
from hpctrain.comm.horovod_knobs import HorovodKnobs
from hpctrain.comm.world import as_collective, world
from hpctrain.env import RankInfo, rank_info
from hpctrain.errors import ConfigError

__all__ = ["BACKENDS", "Collective", "Comm", "GradientExchange", "HorovodKnobs", "LocalCollective", "as_collective",
           "init_comm", "shared_comm", "world"]


def init_comm(backend: str, info: RankInfo | None = None, *, env: Mapping[str, str] | None = None,
              timeout_s: int = 60, torch_backend: str = "auto", horovod: HorovodKnobs | None = None) -> Comm:
    """Start the chosen backend for this rank (the only place a process group is created)."""
    env = os.environ if env is None else env
    info = info or rank_info(env)
    if backend == "mpi":
        from hpctrain.comm.mpi import MpiComm

        return MpiComm(local_rank=info.local_rank)
    if backend == "horovod":
        from hpctrain.comm.horovod import HorovodComm

        return HorovodComm(timeout_s=timeout_s, knobs=horovod)
    if backend == "torch":
        from hpctrain.comm.torch_dist import TorchComm

        return TorchComm(info, env, backend=torch_backend, timeout_s=timeout_s)
    raise ConfigError(f"comm.backend: got {backend!r}, expected one of {list(BACKENDS)}")


_SHARED: dict[str, Comm] = {}


def shared_comm(backend: str, info: RankInfo | None = None, *, timeout_s: int = 60,
                torch_backend: str = "auto", horovod: HorovodKnobs | None = None) -> Comm:
    """One backend instance per process: a process group cannot be created twice, so repeated
    ``train()`` calls in one process (tests, sweeps, requeue loops) reuse it."""
    if backend not in _SHARED:
        if not _SHARED:
            import atexit

            atexit.register(_release_at_exit)
        _SHARED[backend] = init_comm(backend, info, timeout_s=timeout_s, torch_backend=torch_backend,
                                     horovod=horovod)
    return _SHARED[backend]


def _release_at_exit() -> None:
    # Local teardown only (no barrier: a peer may already be gone). Without it torch's gloo
    # threads outlive the interpreter and abort the process ("terminate called ...").
    while _SHARED:
        _, comm = _SHARED.popitem()
        try:
            comm.shutdown()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def shutdown_shared() -> None:
    """Release every shared backend (end of a program): torch's process group must be destroyed
    before exit, or its background threads abort the process ("terminate called ...")."""
    while _SHARED:
        _, comm = _SHARED.popitem()
        comm.barrier()
        comm.shutdown()
