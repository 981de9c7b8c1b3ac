"""What each worker advertises: cpus, gpus and memory. Pure (env and counts are passed in).

Order of precedence per resource: an override flag (one value, or a comma list applied
to workers in rank order), then Slurm's allocation, then an even split of the node among
the workers on it (``--workers-per-node``, by default the worker ranks found there).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from hpctrain.farm.scheduler import Resources
from hpctrain.farm.tasks import FarmError


def parse_per_worker(raw: str | None, name: str, cast=int) -> list | None:
    """'2' or '1,2,4' -> a list (cycled over workers); None when not given."""
    if raw is None or raw == "":
        return None
    try:
        vals = [cast(v) for v in str(raw).split(",")]
    except ValueError:
        raise FarmError(f"{name} {raw!r} is not a number or a comma list of numbers, e.g. '2' or '1,2'") from None
    if any(not math.isfinite(v) for v in vals):
        raise FarmError(f"{name} {raw!r} has a value that is not a finite number")
    if any(v < 0 for v in vals):
        raise FarmError(f"{name} {raw!r} has a negative value")
    return vals


def _visible_gpus(env: Mapping[str, str]) -> list[int] | None:
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        raw = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS")
        if raw is None:
            return None
    raw = raw.strip()
    if not raw or raw in ("-1", "NoDevFiles"):
        return []
    ids = []
    for i, part in enumerate(raw.split(",")):
        # UUIDs (GPU-...) or MIG names cannot be indexed by us; count them by position.
        ids.append(int(part) if part.strip().isdigit() else i)
    return ids


def _slurm_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "")
    head = raw.split("(")[0].split(",")[0]
    return int(head) if head.isdigit() else None


def advertise(*, env: Mapping[str, str], node_cpus: int, node_mem_gb: float, workers_on_node: int,
              index_on_node: int, worker_index: int, cpus: Sequence[int] | None = None,
              gpus: Sequence[int] | None = None, mem_gb: Sequence[float] | None = None) -> tuple[Resources, list[int]]:
    """This worker's resources and the GPU ids it may hand to tasks."""
    share = max(1, workers_on_node)
    if cpus:
        c = cpus[worker_index % len(cpus)]
    elif _slurm_int(env, "SLURM_CPUS_PER_TASK"):
        c = _slurm_int(env, "SLURM_CPUS_PER_TASK")
    else:
        total = _slurm_int(env, "SLURM_CPUS_ON_NODE") or node_cpus
        c = max(1, total // share)
    visible = _visible_gpus(env)
    if visible is None:
        visible = []
    # Split the node's visible GPUs into contiguous, disjoint blocks, one per worker.
    per = len(visible) // share
    mine = visible[index_on_node * per:(index_on_node + 1) * per]
    if gpus:
        g = gpus[worker_index % len(gpus)]
        mine = mine[:g] if len(mine) >= g else list(range(g))
    g = len(mine)
    if mem_gb:
        m = float(mem_gb[worker_index % len(mem_gb)])
    elif _slurm_int(env, "SLURM_MEM_PER_NODE"):
        m = _slurm_int(env, "SLURM_MEM_PER_NODE") / 1024 / share
    elif _slurm_int(env, "SLURM_MEM_PER_CPU"):
        m = _slurm_int(env, "SLURM_MEM_PER_CPU") * c / 1024
    else:
        m = node_mem_gb / share
    return Resources(int(c), int(g), round(float(m), 3)), [int(x) for x in mine]


def node_memory_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def node_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
