"""Slurm facts: what the job's environment and ``scontrol show job`` say.

Read-only and side-effect free apart from :func:`show_job`, which asks slurmctld through
the runner seam. Times come from Slurm itself (EndTime, TimeLimit, Restarts), never from a
guess based on how long this process has been alive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from hpctrain.errors import ClusterError
from hpctrain.slurm.runner import run_cmd


@dataclass(frozen=True, slots=True)
class JobFacts:
    """This process's place in a Slurm (or submitit-local) job."""

    executor: str  # "slurm" | "local" | "none"
    job_id: str | None
    array_job_id: str | None
    array_task_id: str | None
    restart_count: int
    rank: int
    ntasks: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def job_facts(env: Mapping[str, str] | None = None) -> JobFacts:
    """The job-level view of :func:`hpctrain.env.rank_info` (the one table of rank facts)."""
    from hpctrain.env import rank_info

    info = rank_info(env)
    if info.executor == "none":
        return JobFacts(executor="none", job_id=None, array_job_id=None, array_task_id=None, restart_count=0,
                        rank=0, ntasks=1)
    local = info.executor == "local"
    return JobFacts(executor=info.executor, job_id=info.slurm_job_id, array_job_id=info.array_job_id,
                    array_task_id=None if local else info.array_task_id,
                    restart_count=0 if local else info.restart_count, rank=info.rank, ntasks=info.world_size)


# `scontrol show job -o` prints one line of Key=Value pairs; values may hold spaces
# (JobName, paths), so split only where a new capitalised key begins.
_KEY_SPLIT = re.compile(r"\s+(?=[A-Z][A-Za-z/:_]*=)")


def parse_scontrol_record(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in _KEY_SPLIT.split(line.strip()):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def parse_slurm_time(value: str | None) -> datetime | None:
    """``2026-11-27T06:09:44`` (local time, as Slurm prints it) or None for Unknown/None/N/A."""
    if not value or value in ("Unknown", "None", "N/A", "(null)"):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def parse_time_limit(value: str | None) -> int | None:
    """Slurm durations (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in seconds; None if unlimited."""
    if not value or value in ("UNLIMITED", "Partition_Limit", "NONE", "INFINITE"):
        return None
    days = 0
    rest = value
    if "-" in value:
        d, rest = value.split("-", 1)
        days = int(d)
        parts = [int(p) for p in rest.split(":")]
        while len(parts) < 3:
            parts.append(0)
        h, m, s = parts
    else:
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return ((days * 24 + h) * 60 + m) * 60 + s


def show_job(job_id: str, *, timeout: float = 30.0) -> dict[str, str] | None:
    """``scontrol show job -o JOB`` as a dict; None when slurmctld no longer knows the job."""
    res = run_cmd(["scontrol", "show", "job", "-o", str(job_id)], timeout=timeout)
    if not res.ok:
        if "Invalid job id" in res.stderr:
            return None
        raise ClusterError(f"scontrol show job {job_id} failed: {res.stderr.strip() or res.stdout.strip()}")
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    # an array job id lists every element; the caller passes element ids, so take the first
    return parse_scontrol_record(lines[0])


def seconds_left(record: Mapping[str, str], now: datetime) -> float | None:
    """Seconds until the job's EndTime as slurmctld sees it; None when it has no limit."""
    if parse_time_limit(record.get("TimeLimit")) is None:
        return None
    end = parse_slurm_time(record.get("EndTime"))
    if end is None:
        return None
    return (end - now).total_seconds()


def pick_mpi_plugin(listing: str) -> str | None:
    """'pmix' when ``srun --mpi=list`` offers it, else None (keep the site default).

    OpenMPI 4+ and mpi4py start under srun only through PMIx here; with the usual site
    default ('none') MPI_Init aborts, so multi-rank MPI/Horovod jobs need it."""
    offered = {line.strip() for line in listing.splitlines()}
    return "pmix" if "pmix" in offered else None


def auto_mpi_plugin(timeout: float = 20.0) -> str | None:
    """Ask this cluster's srun which MPI plugins it has; see :func:`pick_mpi_plugin`."""
    from hpctrain.errors import ClusterError
    from hpctrain.slurm.runner import run_cmd

    try:
        res = run_cmd(["srun", "--mpi=list"], timeout=timeout)
    except ClusterError:  # no srun here (a dry run on a laptop): keep the site default
        return None
    return pick_mpi_plugin(res.stdout + "\n" + res.stderr) if res.ok else None
