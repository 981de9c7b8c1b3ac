"""Where am I: rank, local rank, world size, node and job id.

The one table of rank facts, read in one place, for Slurm, OpenMPI, MPICH/Hydra/PMI,
submitit's local executor and a plain single process. ``hpctrain.slurm.environment.job_facts``
is a view of the same facts. Read-only: nothing here writes ``os.environ``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from hpctrain.errors import ClusterError, HpctrainError

# (launcher, rank, local rank, world size, local size) variables, in order of precedence.
# mpirun inside a Slurm allocation sets both families; the MPI ones describe the ranks
# that were actually started, so they win over SLURM_PROCID of the batch step.
_TABLE = (
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpich", "PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE", "MPI_LOCALNRANKS"),
    ("pmix", "PMIX_RANK", None, None, None),
    # submitit's local executor: its tasks are processes of one node with no MPI wiring
    ("submitit", "SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_LOCALID", "SUBMITIT_LOCAL_NTASKS", None),
    ("slurm", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", None),
)


@dataclass(frozen=True, slots=True)
class RankInfo:
    """The facts a rank needs about itself and its job."""

    rank: int
    local_rank: int
    world_size: int
    local_size: int
    node: str
    launcher: str  # "openmpi" | "mpich" | "pmix" | "submitit" | "slurm" | "single"
    job_id: str | None  # the array's job id for an array element (what names the run), else SLURM_JOB_ID
    array_task_id: str | None
    restart_count: int
    executor: str = "none"  # who runs the job: "slurm" | "local" (submitit's local executor) | "none"
    slurm_job_id: str | None = None  # SLURM_JOB_ID itself (an array element's own id), or "local-N"
    array_job_id: str | None = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str | None, default: int | None) -> int | None:
    if name is None or env.get(name, "") == "":
        return default
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise ClusterError(f"environment variable {name}={raw!r} is not an integer; "
                           "it is set by the launcher, so check how this process was started") from None


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo:
    """Discover this process's place in the job from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    job_id = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    array_task = env.get("SLURM_ARRAY_TASK_ID")
    local_job = env.get("SUBMITIT_EXECUTOR", "") == "local"
    if local_job:
        # prefixed so a local id is never mistaken for (and looked up as) a Slurm job id
        lid = env.get("SUBMITIT_LOCAL_JOB_ID")
        job = dict(executor="local", slurm_job_id=f"local-{lid}" if lid else None, array_job_id=None)
    elif "SLURM_JOB_ID" in env:
        job = dict(executor="slurm", slurm_job_id=env["SLURM_JOB_ID"], array_job_id=env.get("SLURM_ARRAY_JOB_ID"))
    else:
        job = dict(executor="none", slurm_job_id=None, array_job_id=None)
    restarts = _int(env, "SLURM_RESTART_COUNT", 0) or 0
    for launcher, r, lr, ws, ls in _TABLE:
        if launcher == "submitit" and not local_job:
            continue
        if r in env:
            rank = _int(env, r, 0)
            world = _int(env, ws, None)
            if world is None and launcher == "pmix":
                world = _int(env, "OMPI_COMM_WORLD_SIZE", None) or _int(env, "SLURM_NTASKS", 1)
            elif world is None and launcher == "submitit":
                world = 1
            local = _int(env, lr, None)
            if local is None:
                local = _int(env, "SLURM_LOCALID", 0)
            local_size = _int(env, ls, None)
            if local_size is None:
                local_size = _slurm_tasks_on_this_node(env) or 1
            if world is None or world < 1 or not 0 <= rank < world:
                raise HpctrainError(
                    f"{launcher} says rank {rank} of world size {world}; expected 0 <= rank < size. "
                    "HINT: under Slurm use 'srun' with --ntasks (or --ntasks-per-node), not bare 'sbatch' tasks")
            return RankInfo(rank, local, world, local_size, node, launcher, job_id, array_task, restarts, **job)
    return RankInfo(0, 0, 1, 1, node, "single", job_id, array_task, restarts, **job)


def _slurm_tasks_on_this_node(env: Mapping[str, str]) -> int | None:
    # SLURM_TASKS_PER_NODE looks like "2(x3),1"; the first entry is this node's in the
    # common homogeneous case, which is all we use it for (a default local size).
    raw = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return None
    head = raw.split(",")[0].split("(")[0]
    return int(head) if head.isdigit() else None


def in_slurm_job(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env


def placement_line(placement: list[dict]) -> str:
    """'4 ranks on 2 nodes: n1 (ranks 0-1), n2 (ranks 2-3)', with the devices when a rank
    is on a GPU: 'n1 (ranks 0-1 on cuda:0,cuda:1)'. Pure."""
    by_node: dict[str, list[int]] = {}
    for r, p in enumerate(placement):
        by_node.setdefault(p["node"], []).append(r)

    def span(rs: list[int]) -> str:
        if len(rs) > 1 and rs == list(range(rs[0], rs[-1] + 1)):
            return f"ranks {rs[0]}-{rs[-1]}"
        return ("rank " if len(rs) == 1 else "ranks ") + ",".join(map(str, rs))

    def devices(rs: list[int]) -> str:  # GPUs are worth naming: two ranks on one GPU is a classic mistake
        ds = [str(placement[r].get("device", "cpu")) for r in rs]
        return "" if all(d == "cpu" for d in ds) else " on " + ",".join(ds)

    n = len(placement)
    return (f"{n} rank{'s' if n != 1 else ''} on {len(by_node)} node{'s' if len(by_node) != 1 else ''}: "
            + ", ".join(f"{node} ({span(rs)}{devices(rs)})" for node, rs in by_node.items()))
