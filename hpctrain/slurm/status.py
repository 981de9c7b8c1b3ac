"""Run status from the run dir plus what slurmctld says now (scontrol/squeue; never sacct).

The run dir's event log is the durable record (it outlives MinJobAge and works without
accounting); ``scontrol show job`` adds the live part: PENDING vs REQUEUED vs RUNNING.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpctrain import rundir
from hpctrain.errors import ClusterError, HpctrainError
from hpctrain.rundir import RunDir, is_run_dir
from hpctrain.slurm import journal
from hpctrain.slurm.wait import SETTLE_S, Observation, change_line, end_message, wait_until_final

LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
        "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT")


class RunNotFound(HpctrainError):
    """No run dir by that name or path."""


class RunEnded(HpctrainError):
    """A cancel of a run that has already ended: nothing to do, and nothing is recorded."""

    def __init__(self, message: str, state: str):
        super().__init__(message)
        self.state = state


@dataclass(slots=True)
class RunStatus:
    run: str
    run_dir: Path
    state: str
    job_id: str | None = None
    requeues: int = 0
    retries: int = 0
    timeouts: int = 0
    preemptions: int = 0
    last_step: int | None = None
    last_metrics: dict = field(default_factory=dict)
    reason: str = ""
    slurm: str = ""
    log_tail: list[str] = field(default_factory=list)
    failing_rank: int | None = None
    placement: str = ""    # where the ranks of the latest attempt ran (config.resolved.json)
    warning: str = ""      # the run dir's own records are damaged
    recorded: str = ""     # the run dir's own state, before slurmctld's view is laid over it
    slurm_state: str = ""  # slurmctld's JobState, when it answered
    monitor: list[str] = field(default_factory=list)  # each rank's last monitor sample, then the alerts

    def as_dict(self) -> dict:
        return {"run": self.run, "run_dir": str(self.run_dir), "state": self.state, "job_id": self.job_id,
                "requeues": self.requeues, "retries": self.retries, "timeouts": self.timeouts,
                "preemptions": self.preemptions, "last_step": self.last_step, "last_metrics": self.last_metrics,
                "reason": self.reason, "slurm": self.slurm, "failing_rank": self.failing_rank,
                "placement": self.placement, "warning": self.warning, "log_tail": self.log_tail,
                "monitor": self.monitor}


def default_base() -> Path:
    return Path(os.environ.get("HPCTRAIN_RUNS", "runs"))


def runs_base(runs_dir: str | None, environ=None) -> Path:
    """The runs base dir of --runs-dir, else $HPCTRAIN_RUNS, else runs/.

    One that was named (by the option or the variable) must be a directory: a typo there
    would otherwise read as "no runs". The default runs/ may be absent (nothing submitted yet).
    """
    environ = os.environ if environ is None else environ
    if runs_dir:
        base, named = Path(runs_dir), f"--runs-dir {runs_dir!r}"
    elif environ.get("HPCTRAIN_RUNS"):
        base, named = Path(environ["HPCTRAIN_RUNS"]), f"HPCTRAIN_RUNS={environ['HPCTRAIN_RUNS']!r}"
    else:
        base, named = Path("runs"), None
    if base.exists() and not base.is_dir():
        raise RunNotFound(f"{named or 'the runs dir ' + repr(str(base))} is not a directory; point it at the "
                          "directory that holds the run dirs")
    if named and not base.exists():
        raise RunNotFound(f"{named} does not exist; point it at the directory that holds the run dirs "
                          "(the parent of each run's dir)")
    return base


def resolve_run(arg: str, base: Path | None = None) -> Path:
    """A run given as a path or as a name under the runs base dir."""
    base = default_base() if base is None else base
    for cand in (Path(arg), base / arg):
        if cand.is_dir() and is_run_dir(cand):
            return cand.resolve()
    known = ", ".join(p.name for p in list_runs(base)[:20]) or "none"
    raise RunNotFound(f"no run {arg!r}: neither {arg!r} nor {str(base / arg)!r} is a run dir made by hpctrain "
                      f"submit. Runs under {str(base)!r}: {known}. Pass the run dir path or set HPCTRAIN_RUNS")


def list_runs(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and is_run_dir(p))


def _tail_lines(path: Path, n: int, max_bytes: int = 1 << 16) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-n:]


def last_progress(run_dir: Path) -> tuple[int | None, dict]:
    """(last step, last metrics) from result.json, else the last line of metrics.jsonl."""
    res = RunDir(run_dir).read_result()
    if res is not None and isinstance(res.get("metrics") or {}, dict):
        metrics = {k: v for k, v in (res.get("metrics") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return res.get("step"), metrics
    for line in reversed(_tail_lines(RunDir(run_dir).metrics, 5)):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        metrics = {k: v for k, v in rec.items() if k not in ("step", "epoch", "time") and isinstance(v, (int, float))}
        return rec.get("step"), metrics
    return None, {}


def placement_of(run_dir: Path) -> str:
    """'2 ranks on 2 nodes: n1 (rank 0), n2 (rank 1)' from the run's config.resolved.json, or ''
    (no training run, or one written before placements were recorded)."""
    from hpctrain.env import placement_line

    ranks = RunDir(run_dir).placement()
    return placement_line(ranks) if ranks and all(isinstance(r, dict) and "node" in r for r in ranks) else ""


def rank_log(run_dir: Path, rank: int) -> Path:
    return RunDir(run_dir).rank_log(rank)


def log_tail(run_dir: Path, rank: int, n: int = 20) -> list[str]:
    return _tail_lines(rank_log(run_dir, rank), n)


def _live(job_id: str) -> tuple[dict | None, str]:
    from hpctrain.slurm.environment import show_job

    try:
        return show_job(job_id, timeout=20), ""
    except ClusterError as e:
        return None, f"live state unknown ({e})"


def run_status(run_dir: Path, *, live: bool = True, tail: int = 20) -> RunStatus:
    run_dir = Path(run_dir)
    events, bad = journal.scan_events(run_dir)  # one read: the events and how damaged the log is
    st = journal.fold(events)
    step, metrics = last_progress(run_dir)
    out = RunStatus(run=run_dir.name, run_dir=run_dir, state=st.state, job_id=st.job_id, requeues=st.requeues,
                    retries=st.retries, timeouts=st.timeouts, preemptions=st.preemptions, last_step=step,
                    last_metrics=metrics, reason=st.reason, failing_rank=st.failing_rank, recorded=st.state,
                    placement=placement_of(run_dir))
    if tail:  # one run asked for (the all-runs table passes tail=0 and shows no monitor lines)
        from hpctrain.monitor.report import status_lines

        out.monitor = status_lines(run_dir)
    if bad:
        out.warning = (f"{bad} line(s) of {journal.events_path(run_dir)} are not events (the file is damaged): "
                       "the state shown may be incomplete; check the file, or resubmit with 'hpctrain submit'")
    if live and st.job_id and not st.job_id.startswith("local"):
        rec, note = _live(st.job_id)
        if rec is None:
            out.slurm = note or "gone from slurmctld (MinJobAge passed); state from the run dir"
            if not note and st.state in ("PENDING", "RUNNING", "REQUEUED", "INTERRUPTED") and not st.crashed:
                # no end was logged and Slurm forgot the job: it died with its batch script
                # (cancelled before it started, node lost without requeue, a SIGTERM that Slurm
                # did not follow with a requeue) long enough ago
                out.state = "FAILED"
                gone = (f"job {st.job_id} is gone from slurmctld and the run dir logs no end; "
                        f"resubmit with 'hpctrain submit' (it resumes from the checkpoint)")
                # a stop's reason says what happened before, not why the run is over
                out.reason = f"{out.reason}; then {gone}" if st.state == "INTERRUPTED" and out.reason else \
                    (out.reason or gone)
        else:
            js, restarts = rec.get("JobState", "?"), int(rec.get("Restarts", "0") or 0)
            out.slurm_state = js
            why = rec.get("Reason", "None")
            out.slurm = f"{js}" + (f", reason {why}" if why not in ("None", "") else "") + f", restarts {restarts}"
            out.requeues = max(out.requeues, restarts)
            if st.state not in journal.TERMINAL:
                if js == "PENDING":
                    out.state = "REQUEUED" if restarts > 0 or st.state == "REQUEUED" else "PENDING"
                    if why == "BeginTime" and out.state == "REQUEUED":
                        # Slurm holds a requeued job ~2 minutes; say how to skip the wait
                        out.reason = (f"{out.reason}; " if out.reason else "") + (
                            f"Slurm holds it until its BeginTime; 'scontrol update JobId={st.job_id} StartTime=now' "
                            "starts it sooner")
                elif js in LIVE:
                    out.state = "RUNNING" if js != "REQUEUED" else "REQUEUED"
                elif st.state == "REQUEUED" and restarts <= st.restarts_seen:
                    pass  # our requeue is in flight: slurmctld shows the old attempt ending first
                elif js == "CANCELLED":
                    out.state, out.reason = "CANCELLED", out.reason or "cancelled in Slurm"
                elif js != "COMPLETED" or st.state not in ("RUNNING", "PENDING"):
                    out.state = "FAILED"
                    out.reason = (f"Slurm ended the job as {js} ({rec.get('Reason')})" +
                                  (" before the requeued attempt started; resubmit with 'hpctrain submit' (it resumes)"
                                   if st.state == "REQUEUED" else ""))
    if out.state == "FAILED":
        rank = out.failing_rank if out.failing_rank is not None else 0
        out.failing_rank = rank
        out.log_tail = log_tail(run_dir, rank, tail)
    return out


def damaged_records(run_dir: Path) -> list[str]:
    """Warnings for files of a run dir that status does not need but that are unreadable."""
    spec = RunDir(run_dir).spec
    if not spec.is_file():
        return []
    try:
        json.loads(spec.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else \
            (getattr(e, "strerror", None) or str(e))
        return [f"{str(spec)!r} is damaged ({why}); it is only the readable record of the submission (retries use "
                "slurm/submission.pkl), and the next 'hpctrain submit' of this run writes it again"]
    return []


def observe(run_dir: Path) -> Observation:
    """One poll of a run for the waiter: :func:`run_status` without the log tail."""
    s = run_status(run_dir, tail=0)
    return Observation(state=s.state, job_id=s.job_id, recorded=s.state in journal.TERMINAL and s.state == s.recorded,
                       reason=s.reason, slurm_state=s.slurm_state, requeues=s.requeues, retries=s.retries,
                       failing_rank=s.failing_rank)


def _say(msg: str) -> None:
    print(msg, flush=True)  # a pipeline that tees the output sees each change as it happens


def _warn(msg: str) -> None:
    sys.stdout.flush()
    print(msg, file=sys.stderr, flush=True)


def wait_run(run_dir: Path, *, poll_s: float, timeout_s: float | None = None, echo=_say, warn=_warn,
             poll=observe, clock=time.monotonic, sleep=time.sleep, settle_s: float = SETTLE_S) -> int:
    """Block until the run is COMPLETED (0), otherwise final (1), ``timeout_s`` passed (124) or Ctrl-C (130).

    Prints one line per state change. Never cancels the job: a timeout or Ctrl-C only stops waiting.
    """
    run_dir = Path(run_dir)
    st = journal.fold(journal.read_events(run_dir))
    if not st.job_id:
        raise RunNotFound(f"run {str(run_dir)!r} has no job to wait for (its event log names none); "
                          "submit it with 'hpctrain submit' first")
    ref = shlex.quote(str(run_dir))
    echo(f"waiting for run {run_dir.name!r} (job {st.job_id}): one line per state change; "
         "Ctrl-C stops waiting, not the job")
    res = wait_until_final(lambda: poll(run_dir), poll_s=poll_s, timeout_s=timeout_s, clock=clock, sleep=sleep,
                           on_change=lambda t, obs: echo(change_line(t, obs)), settle_s=settle_s)
    msg = end_message(res, run=run_dir.name, ref=ref, timeout_s=timeout_s)
    (echo if res.outcome in ("completed", "ended") else warn)(msg)
    return res.exit_code


def format_status(s: RunStatus) -> str:
    metric = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.last_metrics.items())
    lines = [f"run        {s.run}  ({s.run_dir})",
             f"state      {s.state}" + (f"  -- {s.reason}" if s.reason else ""),
             f"job        {s.job_id or '-'}" + (f"  [slurm: {s.slurm}]" if s.slurm else ""),
             f"requeues   {s.requeues} (timeouts {s.timeouts}, preemptions {s.preemptions}); retries {s.retries}",
             f"last step  {s.last_step if s.last_step is not None else '-'}" + (f"  {metric}" if metric else "")]
    if s.placement:
        lines.append(f"placement  {s.placement}")
    lines += [f"monitor    {m}" for m in s.monitor]
    if s.warning:
        lines.append(f"warning    {s.warning}")
    if s.log_tail:
        lines.append(f"--- last {len(s.log_tail)} lines of {rank_log(s.run_dir, s.failing_rank or 0)} ---")
        lines += s.log_tail
    return "\n".join(lines)


def format_table(rows: list[RunStatus]) -> str:
    head = f"{'RUN':24} {'STATE':10} {'JOB':10} {'REQ':>3} {'RET':>3} {'STEP':>7}  METRIC"
    out = [head]
    for s in rows:
        metric = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in list(s.last_metrics.items())[:2])
        out.append(f"{s.run[:24]:24} {s.state:10} {str(s.job_id or '-'):10} {s.requeues:>3} {s.retries:>3} "
                   f"{str(s.last_step if s.last_step is not None else '-'):>7}  {metric}")
    return "\n".join(out)


def cancel_run(run_dir: Path) -> list[str]:
    """scancel the run's live job(s); record it. Returns the job ids signalled.

    A run whose log already records its end (COMPLETED, FAILED, CANCELLED), or a sweep all
    of whose trials have ended, raises RunEnded and is left as it is: a 'cancelled' event
    would turn a COMPLETED run into a CANCELLED one.
    """
    from hpctrain.slurm.runner import run_cmd
    run_dir = Path(run_dir)
    st = journal.fold(journal.read_events(run_dir))
    ids = []
    if rundir.is_sweep_dir(run_dir):
        meta = rundir.load_sweep(run_dir)
        states = [journal.fold(journal.read_events(rundir.trial_dir(run_dir, t["index"]))).state
                  for t in meta["trials"]]
        planned = meta.get("planned", len(states))
        if states and len(states) >= planned and all(x in journal.TERMINAL for x in states):
            counts = ", ".join(f"{x}={states.count(x)}" for x in sorted(set(states)))
            raise RunEnded(f"sweep {run_dir.name!r} has already ended: all {len(states)} trials ended ({counts}); "
                           "nothing to cancel", "ENDED")
        ids = [str(j) for j in meta["job_ids"]]
        for trial in RunDir(run_dir).trial_dirs():
            ids += [j for j in journal.fold(journal.read_events(trial)).job_ids if "_" not in j]
    elif st.state in journal.TERMINAL:
        raise RunEnded(f"run {run_dir.name!r} has already ended ({st.state}" + (f": {st.reason}" if st.reason else "")
                       + "); nothing to cancel", st.state)
    elif st.job_id:
        ids = [st.job_id]
    if not ids:
        raise RunNotFound(f"run {str(run_dir)!r} has no job to cancel (state {st.state})")
    slurm_ids = sorted({i for i in ids if not i.startswith("local")})
    if slurm_ids:
        run_cmd(["scancel", *slurm_ids], timeout=60, check=True)
    journal.record(run_dir, "cancelled", job_id=st.job_id, reason=f"cancelled by 'hpctrain cancel' ({', '.join(ids)})")
    return slurm_ids
