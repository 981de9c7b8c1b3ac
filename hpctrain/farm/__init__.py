"""``hpctrain farm``: many independent tasks over an MPI allocation.

Rank 0 dispatches from a pure scheduler (resource-aware, pull-based, retries with backoff)
and journals each end state; the other ranks run commands or Python functions. See
docs/farm.md. Nothing heavy is imported here; mpi4py is imported only by ``run_mpi``.
"""

from hpctrain.farm.tasks import FarmError, Task, parse_tasks

__all__ = ["FarmError", "Task", "parse_tasks", "FarmConfig", "run_farm"]


def __getattr__(name):
    if name in ("FarmConfig", "run_farm", "run_local", "run_mpi", "FarmReport"):
        from hpctrain.farm import driver

        return getattr(driver, name)
    raise AttributeError(name)
