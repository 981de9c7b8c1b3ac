"""The run's life as an append-only event log (``RUN/slurm/events.jsonl``) and its fold.

Several writers touch a run over its life (the submitter, rank 0 of each attempt, the
batch script's after-step, ``hpctrain cancel``); appending one small JSON line each is
safe without locks, and the current state is a pure fold over the lines.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hpctrain.fileio import append_jsonl
from hpctrain.rundir import EVENTS, RunDir

__all__ = ["EVENTS", "TERMINAL", "RunState", "damaged_lines", "events_path", "fold", "read_events", "record",
           "scan_events"]

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def events_path(run_dir: str | os.PathLike) -> Path:
    return RunDir(run_dir).events


def record(run_dir: str | os.PathLike, event: str, **data: Any) -> dict:
    rec = {"event": event, "time": round(time.time(), 3), "host": socket.gethostname(), **data}
    path = events_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, rec)
    return rec


def scan_events(run_dir: str | os.PathLike) -> tuple[list[dict], int]:
    """(the readable events, how many non-empty lines were not one, a torn last line excepted)."""
    path = events_path(run_dir)
    if not path.is_file():
        return [], 0
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out, bad = [], 0
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and isinstance(rec.get("event"), str):
            out.append(rec)
        elif line.strip() and i != len(lines) - 1:  # a torn last line after a node crash is expected
            bad += 1
    return out, bad


def read_events(run_dir: str | os.PathLike) -> list[dict]:
    """The run's events; unreadable lines are skipped (see :func:`damaged_lines`)."""
    return scan_events(run_dir)[0]


def damaged_lines(run_dir: str | os.PathLike) -> int:
    """Lines of events.jsonl that are not an event, not counting a torn last line."""
    return scan_events(run_dir)[1]


@dataclass(slots=True)
class RunState:
    state: str = "UNKNOWN"
    job_id: str | None = None
    job_ids: list[str] = field(default_factory=list)
    requeues: int = 0
    retries: int = 0
    timeouts: int = 0
    preemptions: int = 0
    restarts_seen: int = 0
    reason: str = ""
    failing_rank: int | None = None
    permanent: bool = False
    crashed: bool = False  # a rank died; the after-step has not yet retried or given up


def fold(events: Iterable[dict]) -> RunState:
    """The run's state after ``events`` (pure)."""
    st = RunState()
    started: set[str] = set()
    for ev in events:
        kind = ev.get("event")
        jid = ev.get("job_id")
        if jid is not None:
            jid = str(jid)
            if jid not in st.job_ids:
                st.job_ids.append(jid)
            if kind in ("submitted", "started", "retry"):
                st.job_id = jid
        if kind == "submitted":
            # the job can start (and log it) before the submitter logs the submission
            if jid not in started:
                st.state, st.reason = "PENDING", ""
            if ev.get("fresh"):  # a new `hpctrain submit` of an old run gets fresh budgets
                st.retries = st.timeouts = st.preemptions = st.requeues = st.restarts_seen = 0
                st.permanent, st.failing_rank = False, None
        elif kind == "started":
            started.add(jid)
            if st.state in ("REQUEUED", "INTERRUPTED") and st.reason and not st.reason.startswith("resumed after"):
                st.reason = f"resumed after: {st.reason}"  # the old cause, not a current problem
            st.state, st.crashed = "RUNNING", False
            st.restarts_seen = max(st.restarts_seen, int(ev.get("restart_count", 0)))
        elif kind == "requeue":
            st.state = "REQUEUED"
            st.requeues += 1
            if ev.get("kind") == "timeout":
                st.timeouts += 1
            else:
                st.preemptions += 1
            st.reason = ev.get("reason", "")
        elif kind == "stopped":
            if st.state != "CANCELLED":  # the SIGTERM of a cancel arrives after the cancel
                st.state, st.reason = "INTERRUPTED", ev.get("reason", "")
        elif kind in ("completed", "already_completed"):
            if kind == "completed" or st.state != "COMPLETED":
                st.state, st.reason = "COMPLETED", ""
        elif kind == "failed":
            if st.state == "CANCELLED":
                continue
            st.reason = ev.get("message", "")
            st.permanent = bool(ev.get("permanent"))
            if st.permanent:
                st.state = "FAILED"
            else:  # not final: a retry may follow (see retry.after_step)
                st.crashed = True
            if ev.get("rank") is not None:
                st.failing_rank = int(ev["rank"])
        elif kind == "retry":
            st.crashed = False
            if jid not in started:
                st.state = "PENDING"
            st.retries += 1
            st.reason = ev.get("reason", "")
        elif kind == "gave_up":
            st.state, st.reason = "FAILED", ev.get("reason", st.reason)
        elif kind == "cancelled":
            st.state, st.reason = "CANCELLED", ev.get("reason", "cancelled by the user")
    # Slurm may requeue on its own (node failure, preemption by SIGTERM): count those too
    st.requeues = max(st.requeues, st.restarts_seen)
    return st
