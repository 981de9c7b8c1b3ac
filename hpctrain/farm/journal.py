"""The farm's journal: one fsynced JSON line per task end state, append-only.

A farm restarted with the same --out reads it and skips tasks that already succeeded with
the same definition (the digest of their line), so a requeue, a crash or a Ctrl-C loses at
most the tasks that were running. Only the dispatcher (rank 0) writes it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from hpctrain.farm.tasks import FarmError, Task

JOURNAL = "journal.jsonl"


def journal_path(out: Path) -> Path:
    return Path(out) / JOURNAL


def load(out: Path) -> dict[str, dict]:
    """Last record per task id. A torn final line (a crash mid-write) is ignored; a
    malformed line elsewhere means the file was edited or is not ours, so it is an error."""
    path = journal_path(out)
    if not path.exists():
        return {}
    last: dict[str, dict] = {}
    lines = path.read_bytes().split(b"\n")
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "id" not in rec or "state" not in rec:
                raise ValueError("not a task record")
        except ValueError as e:
            if i == len(lines):  # no newline after it: the write was cut short
                continue
            raise FarmError(f"journal {str(path)!r} line {i} is malformed ({e}); it is append-only and written "
                            "by the farm. Move it away to start over, or delete that line") from None
        last[str(rec["id"])] = rec
    return last


def already_done(tasks: list[Task], records: dict[str, dict], *, skip_failed: bool = False) -> set[str]:
    """Ids to skip: succeeded (or, with ``skip_failed``, finally failed) with the same definition."""
    ok_states = {"succeeded", "failed"} if skip_failed else {"succeeded"}
    out = set()
    for t in tasks:
        rec = records.get(t.id)
        if rec and rec.get("state") in ok_states and rec.get("digest") == t.digest:
            out.add(t.id)
    return out


def make_record(task: Task, state: str, attempts: list[dict]) -> dict:
    last = attempts[-1] if attempts else {}
    return {"id": task.id, "state": state, "digest": task.digest, "attempts": len(attempts),
            "worker": last.get("worker"), "elapsed_s": round(float(last.get("elapsed_s") or 0.0), 6),
            "error": last.get("error", ""), "time": round(time.time(), 3), "history": attempts}


class JournalWriter:
    """Appends records; each is written and flushed at once, then fsynced by a background thread.

    The write+flush puts the line in the kernel, so a killed process or rank loses nothing.
    fsync (3.5 ms on a local disk here, more on a parallel file system) runs in a thread that
    syncs everything written since its last sync in one call (group commit), so a burst of
    end states costs one fsync and the dispatch loop never waits for the disk. Only a kernel
    or node crash in that window of milliseconds can lose records; those tasks then rerun.
    """

    def __init__(self, out: Path):
        self._f = open(journal_path(out), "a", encoding="utf-8")
        self._dirty = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._sync_loop, name="farm-journal-fsync", daemon=True)
        self._thread.start()

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, allow_nan=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
        self._dirty.set()

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            if self._closing:
                return
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._closing = True
        self._dirty.set()
        self._thread.join(timeout=30)
        with self._lock:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
