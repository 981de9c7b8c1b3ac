"""Provenance of a training run: ``config.resolved.json`` records the resolved config, the
batch plan, package versions, the git revision and where every rank ran."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hpctrain.env import RankInfo
from hpctrain.rundir import RESOLVED, RunDir  # noqa: F401 - RESOLVED: public name, kept here
from hpctrain.train.config import TrainConfig
from hpctrain.train.plan import Plan

def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("hpctrain", "torch", "numpy", "horovod", "mpi4py", "h5py", "numba"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    import subprocess

    try:
        p = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20,
                           cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def cluster_facts(info: RankInfo, placement: list[dict] | None = None) -> dict:
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURM_NTASKS",
            "SLURM_RESTART_COUNT", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "CUDA_VISIBLE_DEVICES")
    facts = {"launcher": info.launcher, "world_size": info.world_size, "node": info.node,
             "env": {k: os.environ[k] for k in keys if k in os.environ}}
    if placement is not None:
        facts["ranks"] = [{"rank": r, **p} for r, p in enumerate(placement)]
        facts["nodes"] = sorted({p["node"] for p in placement})
    return facts


def write_resolved(cfg: TrainConfig, info: RankInfo, plan: Plan, placement: list[dict] | None = None) -> None:
    from hpctrain.config import to_dict

    plan_d = {"world_size": plan.world_size, "batch_size_per_rank": plan.batch_size, "accum": plan.accum,
              "global_batch": plan.global_batch, "peak_lr": plan.lr}
    if plan.stages > 1:
        plan_d.update(pipeline_stages=plan.stages, replicas=plan.replicas, microbatches=plan.microbatches,
                      schedule=cfg.parallel.schedule)
    RunDir(cfg.run.dir).write_resolved({
        "config": json.loads(json.dumps(to_dict(cfg))), "plan": plan_d,
        "versions": versions(), "git_revision": git_revision(), "cluster": cluster_facts(info, placement)})
