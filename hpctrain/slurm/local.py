"""``--cluster local``: submitit's LocalExecutor, supervised in the foreground.

The local controller restarts tasks that exit 144 (the job's requeue); crashes are retried
here with the decisions of :mod:`hpctrain.slurm.after_step`, as the Slurm after-step makes them.
"""

from __future__ import annotations

import os
import time

from hpctrain.errors import ConfigError
from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.after_step import decide, record_decision
from hpctrain.slurm.job import TrainTask
from hpctrain.slurm.submit import Submission, _import_submitit, prepare_dirs, save_submission


def run_local(sub: Submission, *, poll_s: float = 0.2, echo=print) -> int:
    """Run ``sub`` on this machine until it has ended; 0 when it COMPLETED, else 1."""
    submitit = _import_submitit()
    from hpctrain.slurm.environment import parse_time_limit

    spec = sub.spec
    if spec.nodes != 1:
        raise ConfigError(f"--cluster local runs on one node, got --nodes {spec.nodes}")
    if isinstance(sub.job.task, TrainTask) and spec.ntasks_per_node != 1:
        # submitit's local tasks are separate processes with no MPI wiring between them, so no
        # collective could join them into one training run
        raise ConfigError(f"--cluster local trains one rank, got --ntasks-per-node {spec.ntasks_per_node}; "
                          "for several local ranks use 'hpctrain launch -n N -- hpctrain train CONFIG'")
    prepare_dirs(spec)
    save_submission(sub)
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = spec.signal.upper().removeprefix("SIG")
    limit_s = parse_time_limit(spec.time) if spec.time else None
    ex = submitit.LocalExecutor(folder=spec.submitit_dir)
    ex.update_parameters(timeout_min=(limit_s or 7 * 24 * 3600) / 60, tasks_per_node=spec.ntasks_per_node,
                         signal_delay_s=spec.signal_delay_s)
    run_dir = spec.run_dir
    run = RunDir(run_dir)
    fresh = True
    while True:
        job = ex.submit(sub.job)
        jid = f"local-{job.job_id}"
        journal.record(run_dir, "submitted", job_id=jid, fresh=fresh,
                       attempt=0 if fresh else journal.fold(journal.read_events(run_dir)).retries)
        fresh = False
        echo(f"hpctrain: local job {jid} started (logs: {run.logs})")
        proc = job._process
        while proc.poll() is None:
            time.sleep(poll_s)
        rc = proc.returncode
        st, decision = decide(run_dir, rc, sub.retry)
        if decision.action == "none":
            ok = run.is_completed()
            if not ok and st.state not in journal.TERMINAL:
                journal.record(run_dir, "gave_up", job_id=jid, reason=f"local controller ended (exit {rc}) "
                               f"in state {st.state}; submitit restarts a local job at most 6 times")
            return 0 if ok else 1
        record_decision(run_dir, st, decision, exit_code=rc, job_id=jid, death=f"job exited with code {rc}")
        if decision.action == "fail":
            echo(f"hpctrain: {decision.reason}")
            return 1
        journal.record(run_dir, "retry", job_id=jid, delay_s=decision.delay_s, reason=decision.reason)
        echo(f"hpctrain: {decision.reason}; waiting {decision.delay_s:.0f} s")
        time.sleep(decision.delay_s)

