"""Helpers shared by the tests that run jobs on a real local Slurm cluster
(tests/test_slurm_cluster.py: one node; tests/test_slurm_multinode.py: several)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

from hpctrain.slurm import journal
from hpctrain.slurm.environment import show_job
from hpctrain.slurm.status import run_status


def wait_for(pred, timeout: float, what: str, poll: float = 0.3):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = pred()
        if out:
            return out
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


_pending_since: dict[tuple[str, str], float] = {}


def release_if_requeued(job_id: str) -> None:
    """StartTime=now on a requeued job, but not within 3 s of the requeue: slurmd refuses a
    restart in the second its old credential was revoked ("Job credential revoked") and the
    job then ends FAILED instead of running."""
    rec = show_job(job_id)
    if rec and rec.get("JobState") == "PENDING" and rec.get("Reason") == "BeginTime":
        key = (job_id, rec.get("Restarts", "0"))
        first = _pending_since.setdefault(key, time.monotonic())
        if time.monotonic() - first >= 3:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True,
                           timeout=30)


def drive(run_dir: Path, timeout: float) -> str:
    """Wait for a final state, releasing requeued (and retried) jobs at once."""
    def done():
        st = journal.fold(journal.read_events(run_dir))
        if st.job_id and not st.job_id.startswith("local"):
            release_if_requeued(st.job_id)
        s = run_status(run_dir, tail=0)
        return s.state if s.state in journal.TERMINAL else None
    return wait_for(done, timeout, f"{run_dir.name} to finish", poll=0.5)


def events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in journal.read_events(run_dir) if e["event"] == name]


def job_of(run_dir: Path) -> str:
    """The run's current Slurm job id, from its event log."""
    return journal.fold(journal.read_events(run_dir)).job_id


def make_blobs(out: Path, *, train: int = 480, val: int = 60, rows_per_shard: int = 64) -> Path:
    """A small 3-class tabular shard set (``train`` and ``val`` rows of 6 features) at ``out``."""
    from hpctrain.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 6))
    with ShardWriter(out, feature_names=[f"f{i}" for i in range(6)], sample_shape=(6,),
                     rows_per_shard=rows_per_shard, classes=[0, 1, 2]) as w:
        for split, n in (("train", train), ("val", val)):
            y = rng.integers(0, 3, n)
            w.add((centers[y] + rng.normal(0, 1.0, size=(n, 6))).astype(np.float32), y.astype(np.int64), split=split)
    return out


def write_cfg(path: Path, data_dir: Path, name: str, **extra) -> Path:
    """A short MLP training config on ``data_dir``; ``extra`` merges into its sections."""
    import yaml

    cfg = {"run": {"name": name, "epochs": 2, "seed": 5},
           "data": {"dir": str(data_dir), "batch_size": 16, "prefetch": 0},
           "model": {"kind": "mlp", "hidden": [16]}, "optimizer": {"name": "adamw", "lr": 0.01},
           "checkpoint": {"every_steps": 50, "keep": 3},
           "logging": {"every_steps": 2, "plots": False, "progress": False},
           # torch.distributed needs no srun --mpi plugin; comm.backend mpi needs --mpi=pmix (the template test)
           "comm": {"backend": "torch"}}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path.write_text(yaml.safe_dump(cfg))
    return path
