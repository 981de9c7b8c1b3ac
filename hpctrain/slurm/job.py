"""The callable every rank runs inside a submitted job (pickled by submitit).

It wraps a *task* -- ``task(run_dir, stop_requested) -> "completed" | "interrupted"`` --
which is ``hpctrain.train.trainer.train`` for real runs (:class:`TrainTask`) and a tiny
resumable counter in tests and smoke checks. What is pickled is only the run dir, the
task's config reference and the policy: every restart resumes from the newest checkpoint
in the run dir, never from state frozen at submission.

Why submitit's own checkpoint/requeue is bypassed: its USR2 handler calls ``checkpoint()``
and ``scontrol requeue`` inside the signal handler (IO in a handler, on rank 0 only, while
other ranks may be in a collective), it classifies every signal of a job shorter than 10
minutes as a timeout, and it ignores SIGTERM (a finished job then keeps running). So the
job installs :class:`PreemptionFlag` over submitit's handlers; submitit still pickles,
submits, starts one process per rank and, locally, restarts tasks that exit with 144.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from hpctrain.errors import ClusterError, HpctrainError
from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.environment import JobFacts, job_facts, seconds_left, show_job
from hpctrain.slurm.requeue import PreemptionFlag, RequeuePolicy, classify_interrupt, decide_requeue
from hpctrain.slurm.runner import run_cmd

# submitit's LocalExecutor restarts the tasks of a job that exits with this code
LOCAL_REQUEUE_RETURN_CODE = 144


class Task(Protocol):
    def __call__(self, run_dir: Path, stop_requested: Callable[[], bool]) -> str: ...


class RequeueFailed(ClusterError):
    """The checkpoint is written but Slurm refused (or could not be asked) to requeue."""

    transient = True


def is_permanent(exc: BaseException) -> bool:
    """Errors that a retry cannot fix: bad config, missing input, import/syntax errors."""
    if getattr(exc, "transient", False):
        return False
    return isinstance(exc, (HpctrainError, ImportError, SyntaxError, FileNotFoundError, NotADirectoryError))


@dataclass(kw_only=True)
class TrainTask:
    """The real trainer as a task: the config snapshot in the run dir plus overrides."""

    config: str
    overrides: list[str] = field(default_factory=list)

    def __call__(self, run_dir: Path, stop_requested: Callable[[], bool]) -> str:
        from hpctrain.train.config import load_config
        from hpctrain.train.trainer import train

        cfg = load_config(self.config, [*self.overrides, f"run.dir={run_dir}"])
        res = train(cfg, stop_requested=stop_requested)
        return "completed" if getattr(res, "status", None) == "completed" else "interrupted"


def _redirect_local_logs(run_dir: Path, rank: int) -> None:
    # srun writes rank logs on Slurm; the local executor logs into submitit's folder, so
    # point this process's stdout/stderr at the same per-rank file Slurm would use.
    log = RunDir(run_dir).rank_log(rank)
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class HoldForSignal:
    """A stop poll whose ``at``-th call waits until the signal has arrived, then says stop.

    A testing aid (``--test-hold-at``): the task stops at a known step boundary on any machine
    speed, instead of racing the signal against the end of the run. It holds once per run:
    the marker rank 0 writes when it starts waiting turns it off for every later attempt.
    """

    def __init__(self, is_set: Callable[[], bool], at: int, marker: Path, *, is_root: bool, wait_s: float = 0.05):
        self.is_set, self.at, self.marker, self.is_root, self.wait_s = is_set, at, marker, is_root, wait_s
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls == self.at:
            if self.is_root:
                from hpctrain.fileio import atomic_write_text

                atomic_write_text(self.marker, f"{os.getpid()}\n")
            print(f"hpctrain: --test-hold-at {self.at}: waiting for the signal", flush=True)
            while not self.is_set():
                time.sleep(self.wait_s)
        return self.is_set()


@dataclass(kw_only=True)
class RunJob:
    run_dir: str
    task: Task
    policy: RequeuePolicy = field(default_factory=RequeuePolicy)
    hold_at: int | None = None  # testing aid: see HoldForSignal

    def __call__(self) -> str:
        run_dir = Path(self.run_dir)
        facts = job_facts()
        if facts.executor == "local":
            _redirect_local_logs(run_dir, facts.rank)
        flag = PreemptionFlag(self.policy.signal).install()
        try:
            return self._run(run_dir, facts, flag)
        finally:
            flag.uninstall()  # all default again for whoever called this (also a library call)

    def _run(self, run_dir: Path, facts: JobFacts, flag: PreemptionFlag) -> str:
        started = time.monotonic()
        if RunDir(run_dir).is_completed():
            # the double-requeue case: the work is done, touch nothing and leave at once
            flag.uninstall(keep_preemption_signal=True)
            if facts.is_root:
                journal.record(run_dir, "already_completed", job_id=facts.job_id, restart_count=facts.restart_count)
            print(f"hpctrain: run {run_dir} already completed; exiting without running again", flush=True)
            return "completed"
        if facts.is_root:
            journal.record(run_dir, "started", job_id=facts.job_id, restart_count=facts.restart_count,
                           ntasks=facts.ntasks)
        pid_file = RunDir(run_dir).pid_file(facts.rank)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
        stop: Callable[[], bool] = flag.is_set
        marker = RunDir(run_dir).hold_marker
        if self.hold_at is not None and not marker.exists():
            stop = HoldForSignal(flag.is_set, self.hold_at, marker, is_root=facts.is_root)
        try:
            outcome = self.task(run_dir, stop)
        except BaseException as e:
            flag.uninstall(keep_preemption_signal=True)
            if not isinstance(e, (SystemExit, KeyboardInterrupt)):
                permanent = is_permanent(e)
                journal.record(run_dir, "failed", job_id=facts.job_id, rank=facts.rank, permanent=permanent,
                               message=f"{type(e).__name__}: {e}"[:2000])
                traceback.print_exc()
            raise
        # the work is over: from here a SIGTERM must kill, not be swallowed; a repeated
        # preemption signal must not (its default action would end the step before the requeue)
        flag.uninstall(keep_preemption_signal=True)
        if outcome == "completed":
            if facts.is_root:
                journal.record(run_dir, "completed", job_id=facts.job_id)
            return "completed"
        return self._after_interrupt(run_dir, facts, flag, started)

    def _after_interrupt(self, run_dir: Path, facts: JobFacts, flag: PreemptionFlag, started: float) -> str:
        if not facts.is_root:
            # rank 0 requeues; a non-zero exit here would let srun kill it first
            if facts.executor == "local":
                sys.exit(LOCAL_REQUEUE_RETURN_CODE)
            return "interrupted"
        left = _seconds_left(facts, self.policy, started)
        kind = classify_interrupt(got_sigterm=flag.terminated, seconds_left=left,
                                  signal_delay_s=self.policy.signal_delay_s)
        st = journal.fold(journal.read_events(run_dir))
        decision = decide_requeue(kind, timeouts_so_far=st.timeouts, preemptions_so_far=st.preemptions,
                                  policy=self.policy)
        if not decision.requeue:
            if kind == "terminated":
                journal.record(run_dir, "stopped", job_id=facts.job_id, kind=kind, reason=decision.reason)
            else:
                journal.record(run_dir, "failed", job_id=facts.job_id, rank=0, permanent=True,
                               message=decision.reason)
            print(f"hpctrain: not requeued: {decision.reason}", flush=True)
            return "interrupted"
        resubmit = facts.executor == "slurm" and self.policy.restart == "resubmit"
        journal.record(run_dir, "requeue", job_id=facts.job_id, kind=kind, reason=decision.reason,
                       seconds_left=left, restart="resubmit" if resubmit else "requeue")
        if resubmit:
            # the batch script's after-step submits the next attempt once this job step has ended
            print(f"hpctrain: checkpoint written; resubmitting ({decision.reason})", flush=True)
            return "interrupted"
        print(f"hpctrain: checkpoint written; requeueing ({decision.reason})", flush=True)
        if facts.executor == "local":
            sys.exit(LOCAL_REQUEUE_RETURN_CODE)
        if facts.executor != "slurm" or not facts.job_id:
            raise RequeueFailed("interrupted outside a Slurm job: nothing to requeue; run again to resume")
        res = run_cmd(["scontrol", "requeue", facts.job_id], timeout=60)
        if not res.ok:
            raise RequeueFailed(f"'scontrol requeue {facts.job_id}' failed: {res.stderr.strip()}; the checkpoint "
                                "is saved, so a retry (or 'hpctrain submit' again) resumes from it")
        return "interrupted"


def _seconds_left(facts: JobFacts, policy: RequeuePolicy, started: float) -> float | None:
    if facts.executor == "local":
        # no scheduler here: the local controller's own clock started with this task
        limit = float(os.environ.get("SUBMITIT_LOCAL_TIMEOUT_S", "0") or 0)
        return limit - (time.monotonic() - started) if limit else None
    if not facts.job_id:
        return None
    try:
        rec = show_job(facts.job_id)
    except ClusterError as e:
        # cannot tell: count it as a timeout, so a job that keeps hitting its limit still stops
        print(f"hpctrain: cannot ask slurmctld for the end time ({e}); counting this as a timeout", flush=True)
        return 0.0
    if rec is None:
        return 0.0
    from datetime import datetime

    return seconds_left(rec, datetime.now())


def train_requeue_aware(cfg, policy: RequeuePolicy, *, hold_at: int | None = None, train: Callable | None = None):
    """``hpctrain train --requeue``: train ``cfg`` inside :class:`RunJob` (what 'hpctrain submit' jobs run).

    Returns (exit status, TrainResult): (None, result) when this call trained to completion,
    (status, None) when there is nothing to report -- 0 for a run already completed (a double
    requeue), for a non-root rank, or for a requeue under way; 3 when rank 0 gave up.
    ``hold_at``: see :class:`HoldForSignal`; ``train`` replaces the trainer (tests).
    """
    from hpctrain.env import rank_info

    if train is None:
        from hpctrain.train.trainer import train

    run_dir = Path(cfg.run.dir).resolve()
    box = []

    def task(_run_dir, stop_requested):
        box.append(train(cfg, stop_requested=stop_requested))
        return "completed" if box[-1].status == "completed" else "interrupted"

    # a plain sbatch script has no after-step that could resubmit: the job requeues itself
    policy = replace(policy, restart="requeue")
    outcome = RunJob(run_dir=str(run_dir), task=task, policy=policy, hold_at=hold_at)()
    if outcome == "completed":
        return (None, box[-1]) if box else (0, None)
    if not rank_info().is_root:
        # exit 0: with --kill-on-bad-exit a non-zero status would kill rank 0 before it requeues
        return 0, None
    # rank 0: 0 when the job is requeued (or Slurm's SIGTERM leaves that to Slurm), 3 when it gave up
    state = journal.fold(journal.read_events(run_dir)).state
    return (0 if state in ("REQUEUED", "INTERRUPTED") else 3), None

