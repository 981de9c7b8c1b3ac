"""Submitting runs through submitit: a Slurm executor that submits our sbatch text, and
submitit's LocalExecutor for ``--cluster local``.

The run dir is keyed by the run name, never by the job id, and holds everything a later
attempt needs: ``slurm/submission.pkl`` (the spec, the job callable, the retry policy),
``slurm/events.jsonl``, per-rank logs in ``logs/`` and the trainer's checkpoints (its layout:
:mod:`hpctrain.rundir`). ``--cluster local`` is :mod:`hpctrain.slurm.local`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpctrain.errors import ClusterError
from hpctrain.rundir import RunDir, trial_dir
from hpctrain.slurm import journal
from hpctrain.slurm.job import RunJob
from hpctrain.slurm.retry import RetryPolicy
from hpctrain.slurm.runner import run_cmd
from hpctrain.slurm.sbatch import JobSpec, render_sbatch

@dataclass(kw_only=True)
class Submission:
    spec: JobSpec
    job: RunJob
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cluster: Literal["slurm", "local"] = "slurm"


def save_submission(sub: Submission) -> None:
    import cloudpickle

    from hpctrain.fileio import atomic_write_bytes, atomic_write_json
    from hpctrain.config import to_dict

    run = RunDir(sub.job.run_dir)
    atomic_write_bytes(run.submission, cloudpickle.dumps(sub))
    atomic_write_json(run.spec, {"cluster": sub.cluster, "spec": to_dict(sub.spec),
                                                        "retry": to_dict(sub.retry),
                                                        "policy": to_dict(sub.job.policy)})


def load_submission(run_dir: str | os.PathLike) -> Submission:
    import pickle

    path = RunDir(run_dir).submission
    try:
        return pickle.loads(path.read_bytes())
    except FileNotFoundError:
        raise ClusterError(f"{str(path)!r} is missing: {run_dir} was not created by 'hpctrain submit'") from None


# Client settings the user chose (which cluster to talk to), not facts of a surrounding job.
_KEEP = frozenset({"SLURM_CONF"})


def _sbatch_env() -> dict[str, str]:
    # sbatch run from inside a job (a retry) would inherit the old job's SLURM_*/SBATCH_*
    # settings (cpus, memory, array index) and apply them to the new one
    return {k: v for k, v in os.environ.items()
            if k in _KEEP or not k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_"))}


class _NoSacctWarnings(logging.Filter):
    """Drops submitit's "Bypassing sacct error" warning, one per poll on clusters without accounting."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


def _import_submitit():
    try:
        import submitit
    except ImportError as e:
        raise ClusterError("submitit is not installed; pip install 'submitit>=1.5' (scripts/setup.sh does)") from e
    log = logging.getLogger("submitit")
    if not any(isinstance(f, _NoSacctWarnings) for f in log.filters):
        log.addFilter(_NoSacctWarnings())
    return submitit


_job_class = None


def slurm_job_class():
    """submitit's SlurmJob with a state watcher that never runs sacct.

    hpctrain reads state from the run dir, squeue and scontrol (hpctrain.slurm.status); a
    submitit job object that someone asks for ``.state`` or ``.done()`` answers UNKNOWN
    instead of calling sacct, which fails (and warns on every poll) without accounting.
    """
    global _job_class
    if _job_class is None:
        _import_submitit()
        from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

        class NoSacctWatcher(SlurmInfoWatcher):
            def _make_command(self):
                return None

        class HpctrainSlurmJob(SlurmJob):
            watcher = NoSacctWatcher(delay_s=600)

        _job_class = HpctrainSlurmJob
    return _job_class


def make_slurm_executor(spec: JobSpec):
    """A submitit SlurmExecutor whose script is :func:`render_sbatch` and whose sbatch goes through run_cmd."""
    submitit = _import_submitit()
    SlurmJob = slurm_job_class()

    class HpctrainSlurmExecutor(submitit.SlurmExecutor):
        def __init__(self) -> None:
            try:
                super().__init__(folder=spec.submitit_dir, max_num_timeout=10**6)
            except RuntimeError as e:
                raise ClusterError(f"{e}; 'srun' must be on PATH where 'hpctrain submit' runs "
                                   "(or use --cluster local)") from None
            self.spec = spec

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return render_sbatch(self.spec)

        def _internal_process_submissions(self, delayed_submissions):
            n = len(delayed_submissions)
            want = self.spec.array_size or 1
            if n != want:
                raise ClusterError(f"{n} callables for a spec of {want} task(s)")
            folder = self.spec.submitit_dir
            folder.mkdir(parents=True, exist_ok=True)
            tmp = []
            for d in delayed_submissions:
                # requeue limits are ours (RequeuePolicy); submitit's countdown is never used
                d.set_timeout(60, 10**6)
                path = folder / f".{uuid.uuid4().hex}.pkl"
                d.dump(path)
                tmp.append(path)
            script = folder / f".submission_{uuid.uuid4().hex}.sh"
            script.write_text(render_sbatch(self.spec), encoding="utf-8")
            res = run_cmd(["sbatch", "--parsable", str(script)], timeout=120, env=_sbatch_env())
            if not res.ok:
                for path in tmp:
                    path.unlink(missing_ok=True)
                err = (res.stderr or res.stdout).strip()
                raise ClusterError(f"sbatch refused the job: {err}. The script is {script}; "
                                   "check --partition/--account/--qos/--time against 'sinfo' and your site's limits")
            m = re.match(r"\s*(\d+)", res.stdout)
            if not m:
                raise ClusterError(f"cannot read a job id from sbatch's answer {res.stdout!r}")
            job_id = m.group(1)
            off = self.spec.array_offset
            ids = [f"{job_id}_{off + i}" for i in range(n)] if self.spec.array_size is not None else [job_id]
            os.replace(script, folder / f"{job_id}_submission.sh")
            ntasks = self.spec.nodes * self.spec.ntasks_per_node
            jobs = []
            for jid, path in zip(ids, tmp):
                os.replace(path, folder / f"{jid}_submitted.pkl")
                jobs.append(SlurmJob(folder=folder, job_id=jid, tasks=list(range(ntasks))))
            return jobs

    return HpctrainSlurmExecutor()


def prepare_dirs(spec: JobSpec) -> None:
    from hpctrain.secure.perms import current_umask, make_private_dir

    # 0700 (0750 with --group-share: the umask 'hpctrain submit' set says which), also when it existed
    make_private_dir(spec.run_dir, group_share=current_umask() & 0o070 == 0o020)
    RunDir(spec.run_dir).make_dirs()
    spec.submitit_dir.mkdir(parents=True, exist_ok=True)
    if spec.array_size is not None:
        for i in range(spec.array_offset, spec.array_offset + spec.array_size):
            RunDir(trial_dir(spec.run_dir, i)).make_dirs()


def active_job(run_dir: Path) -> tuple[str, str] | None:
    """(job id, Slurm state) of a run's live job, if slurmctld still runs or queues it."""
    from hpctrain.slurm.environment import show_job

    st = journal.fold(journal.read_events(run_dir))
    if st.state in journal.TERMINAL or not st.job_id or st.job_id.startswith("local"):
        return None
    rec = show_job(st.job_id)
    if rec and rec.get("JobState") in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING",
                                       "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"):
        return st.job_id, rec["JobState"]
    return None


def submit_slurm(sub: Submission) -> str:
    """Submit a run (or a sweep's array) to Slurm; returns the job id."""
    spec = sub.spec
    prepare_dirs(spec)
    save_submission(sub)
    ex = make_slurm_executor(spec)
    job = ex.submit(sub.job)
    job_id = str(job.job_id)
    journal.record(spec.run_dir, "submitted", job_id=job_id, attempt=0, fresh=True)
    return job_id


def resubmit(run_dir: Path, *, delay_s: float, reason: str, event: str = "retry") -> str:
    """A new job for the same run dir and callable that starts after ``delay_s``: a retry
    (``event="retry"``) or the next attempt after a preemption (``"resubmitted"``)."""
    sub = load_submission(run_dir)
    # the first attempt has started, so its --dependency was met; the job it names may have
    # left slurmctld's memory since, and sbatch would then refuse the new job
    # getattr: a run submitted before JobSpec had site options is resubmitted by this version too
    sbatch = [o for o in getattr(sub.spec, "sbatch", []) if o.partition("=")[0] != "dependency"]
    spec = dataclasses.replace(sub.spec, begin=f"now+{int(round(delay_s))}" if delay_s >= 1 else None, sbatch=sbatch)
    if sub.cluster != "slurm":
        raise ClusterError("resubmit() is for Slurm runs; local runs retry in the foreground")
    ex = make_slurm_executor(spec)
    job = ex.submit(sub.job)
    journal.record(run_dir, event, job_id=str(job.job_id), delay_s=delay_s, reason=reason)
    return str(job.job_id)
