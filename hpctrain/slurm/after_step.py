"""What happens when a job step ends: :func:`hpctrain.slurm.retry.decide_retry` applied to the run dir.

The batch script runs ``python -m hpctrain.slurm.after_step --run-dir R --exit-code RC``
after srun returns; a Slurm retry is resubmitted through ``sbatch --begin`` (the node is
not held while waiting). ``--cluster local`` (:mod:`hpctrain.slurm.local`) applies the
same decisions through :func:`record_decision` and waits in the foreground.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.retry import RetryDecision, RetryPolicy, decide_retry
from hpctrain.slurm.submit import load_submission, resubmit


def decide(run_dir: Path, exit_code: int, policy: RetryPolicy) -> tuple[journal.RunState, RetryDecision]:
    """The run's journal state and what follows the step that ended with ``exit_code``."""
    st = journal.fold(journal.read_events(run_dir))
    return st, decide_retry(st, exit_code=exit_code, completed=RunDir(run_dir).is_completed(), policy=policy)


def record_decision(run_dir: Path, st: journal.RunState, decision: RetryDecision, *, exit_code: int,
                    job_id: str | None, death: str) -> None:
    """Journal what a 'retry' or 'fail' decision implies, before any retry is started.

    A step that died without a word (SIGKILL, the OOM killer, a lost node) gets the 'failed'
    event no rank could write (``death`` says how it ended); a 'fail' gets 'gave_up'.
    """
    if decision.action == "none":
        return
    if not st.crashed and st.state != "FAILED":
        journal.record(run_dir, "failed", job_id=job_id or st.job_id, permanent=False, exit_code=exit_code,
                       message=death)
    if decision.action == "fail":
        journal.record(run_dir, "gave_up", job_id=job_id or st.job_id, reason=decision.reason)


def after_step(run_dir: Path, exit_code: int, *, job_id: str | None = None) -> RetryDecision:
    """The Slurm after-step: record the outcome and resubmit if the policy says so."""
    sub = load_submission(run_dir)
    st, decision = decide(run_dir, exit_code, sub.retry)
    record_decision(run_dir, st, decision, exit_code=exit_code, job_id=job_id,
                    death=f"job step exited with code {exit_code} (killed, OOM or lost node?); see the rank logs")
    if decision.action == "retry":
        resubmit(run_dir, delay_s=decision.delay_s, reason=decision.reason)
    return decision


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpctrain.slurm.after_step")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--exit-code", required=True, type=int)
    args = p.parse_args(argv)
    decision = after_step(args.run_dir, args.exit_code, job_id=os.environ.get("SLURM_JOB_ID"))
    print(f"hpctrain: after the job step (exit {args.exit_code}): {decision.action} {decision.reason}".rstrip(),
          flush=True)
    return 0 if decision.action in ("retry", "none") else 1


if __name__ == "__main__":
    sys.exit(main())
