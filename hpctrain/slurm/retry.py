"""Retries after a crash: what to do when the job step ends, decided from the run dir.

The batch script runs ``python -m hpctrain.slurm.retry --run-dir R --exit-code RC`` after
srun returns. A completed or requeued run needs nothing; a permanent error (bad config,
import error, missing data) fails once; any other death (crash, OOM, a killed rank) is
resubmitted into the same run dir, with exponential backoff through ``sbatch --begin``
(the node is not held while waiting), until ``--retries`` are spent.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpctrain.errors import ConfigError
from hpctrain.slurm import journal


@dataclass(kw_only=True, slots=True)
class RetryPolicy:
    retries: int = field(default=0, metadata={"help": "resubmissions after a crash (not after permanent errors)"})
    backoff_s: float = field(default=30.0, metadata={"help": "delay before the first retry; doubles each time"})
    backoff_max_s: float = field(default=600.0, metadata={"help": "cap of the retry delay"})

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ConfigError("--retry-backoff must be >= 0")


@dataclass(frozen=True, slots=True)
class RetryDecision:
    action: Literal["none", "retry", "fail"]
    delay_s: float = 0.0
    reason: str = ""


def decide_retry(st: journal.RunState, *, exit_code: int, completed: bool, policy: RetryPolicy) -> RetryDecision:
    """What follows a finished job step (pure)."""
    if completed or st.state == "COMPLETED":
        return RetryDecision("none", reason="completed")
    if st.state in ("REQUEUED", "INTERRUPTED", "CANCELLED"):
        return RetryDecision("none", reason=st.state.lower())
    if st.state == "FAILED" and st.permanent:
        return RetryDecision("fail", reason=f"not retried (permanent error): {st.reason}")
    why = st.reason if st.crashed and st.reason else f"job step exited with code {exit_code}"
    if st.retries >= policy.retries:
        return RetryDecision("fail", reason=f"failed after {st.retries} retries (--retries {policy.retries}): {why}")
    delay = min(policy.backoff_s * (2 ** st.retries), policy.backoff_max_s)
    return RetryDecision("retry", delay_s=delay, reason=f"retry {st.retries + 1}/{policy.retries} after: {why}")


def after_step(run_dir: Path, exit_code: int, *, job_id: str | None = None) -> RetryDecision:
    """Apply :func:`decide_retry` to the run dir: record the outcome and resubmit if needed."""
    from hpctrain.slurm.job import result_completed
    from hpctrain.slurm.submit import load_submission, resubmit

    st = journal.fold(journal.read_events(run_dir))
    sub = load_submission(run_dir)
    decision = decide_retry(st, exit_code=exit_code, completed=result_completed(run_dir), policy=sub.retry)
    if decision.action == "none":
        if st.state == "REQUEUED" and st.resubmit_due:
            new = resubmit(run_dir, delay_s=0, reason=st.reason, event="resubmitted")
            return RetryDecision("none", reason=f"requeued as job {new}")
        return decision
    if not st.crashed and st.state != "FAILED":  # died without a word (SIGKILL, OOM killer, lost node)
        journal.record(run_dir, "failed", job_id=job_id or st.job_id, permanent=False, exit_code=exit_code,
                       message=f"job step exited with code {exit_code} (killed, OOM or lost node?); see the rank logs")
    if decision.action == "fail":
        journal.record(run_dir, "gave_up", job_id=job_id or st.job_id, reason=decision.reason)
        return decision
    resubmit(run_dir, delay_s=decision.delay_s, reason=decision.reason)
    return decision


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="python -m hpctrain.slurm.retry")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--exit-code", required=True, type=int)
    args = p.parse_args(argv)
    decision = after_step(args.run_dir, args.exit_code, job_id=os.environ.get("SLURM_JOB_ID"))
    print(f"hpctrain: after the job step (exit {args.exit_code}): {decision.action} {decision.reason}".rstrip(),
          flush=True)
    if decision.action == "none" and decision.reason == "completed":
        return 0
    return 0 if decision.action in ("retry", "none") else 1


if __name__ == "__main__":
    sys.exit(main())
