"""Fail fast: an exception on any rank ends every rank, with its traceback in that rank's log.

Without this, one rank dies and the others wait in the next collective until a watchdog
(10-30 minutes for NCCL) or forever (Horovod's stall warning). The pieces:

* an unhandled exception prints the traceback, flushes, and calls ``MPI_Abort`` on
  COMM_WORLD, which makes mpirun/srun kill every rank (mpi4py.futures does the same);
* without MPI (torch backend under srun), the rank exits non-zero at once, and
  ``srun --kill-on-bad-exit=1`` ends the step;
* a rank killed outright (SIGKILL, OOM) runs no hook: the launcher notices the lost
  process (mpirun does so at once), and the survivors' collectives fail through Horovod's
  stall shutdown or torch's collective timeout (both set from ``comm.timeout_s``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any, Callable, Iterator, NoReturn


def _mpi_initialized() -> bool:
    if "mpi4py.MPI" not in sys.modules:
        return False
    MPI = sys.modules["mpi4py.MPI"]
    return bool(MPI.Is_initialized() and not MPI.Is_finalized())


def abort(code: int = 1) -> None:
    """End this rank and, through the launcher, every other rank. Never returns."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if _mpi_initialized():
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)
    os._exit(code)


def _report(exc_type, exc, tb, rank: int | None) -> None:
    prefix = f"[rank {rank}] " if rank is not None else ""
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write("".join(f"{prefix}{line}\n" for line in text.rstrip("\n").split("\n")))
    sys.stderr.write(f"{prefix}hpctrain: aborting all ranks after an error on this rank\n")


def install_excepthook(rank: int | None = None) -> None:
    """Route unhandled exceptions to :func:`abort` (for scripts that run under MPI)."""

    def hook(exc_type, exc, tb):
        # one report per error, Ctrl-C included: Python's own hook would print it a second time
        _report(exc_type, exc, tb, rank)
        abort(1)

    sys.excepthook = hook


def fail(exc: BaseException, rank: int, *, message_only: tuple[type, ...] = ()) -> NoReturn:
    """Report ``exc`` on this rank and abort the whole job: the one way a collective program
    ends after an error. A ``message_only`` exception (bad input, an HpctrainError) is one
    line and exit code 2; anything else is a traceback and exit code 1."""
    if isinstance(exc, message_only):
        sys.stderr.write(f"rank {rank}: error: {exc}\nrank {rank}: hpctrain: aborting all ranks\n")
        abort(2)
    _report(type(exc), exc, exc.__traceback__, rank)
    abort(1)


@contextlib.contextmanager
def abort_on_error(world_size: int, rank: int = 0, *, message_only: tuple[type, ...] = ()) -> Iterator[None]:
    """Around the collective part of a program: an error on one rank aborts all of them.

    With one rank the exception propagates as usual (the CLI prints it). Exceptions of the
    ``message_only`` types are reported as one line instead of a traceback.
    """
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - every escape must end the job, SystemExit included
        if world_size <= 1 or (isinstance(e, SystemExit) and e.code in (0, None)):
            raise
        fail(e, rank, message_only=message_only)


def run_collective(comm, fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank of ``comm`` (a :class:`~hpctrain.comm.collective.Collective`),
    under :func:`abort_on_error` with HpctrainError as the one-line kind: a corrupt shard read
    by one rank ends the job with its message instead of leaving the others in a collective."""
    from hpctrain.errors import HpctrainError

    with abort_on_error(comm.size, comm.rank, message_only=(HpctrainError,)):
        return fn()
