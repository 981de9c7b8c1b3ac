"""Rank 0's live progress line and the final summary table (text only, no IO of its own
beyond the stream it is given)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def bar_line(counts: dict, total: int, elapsed: float, width: int = 24) -> str:
    """One progress line: bar, done/total, failures, running, retrying, rate and ETA."""
    ended = counts.get("succeeded", 0) + counts.get("failed", 0)
    frac = ended / total if total else 1.0
    filled = int(round(frac * width))
    rate = ended / elapsed if elapsed > 0 else 0.0
    eta = (total - ended) / rate if rate > 0 else None
    return (f"[{'#' * filled}{'.' * (width - filled)}] {ended}/{total} "
            f"ok {counts.get('succeeded', 0)} failed {counts.get('failed', 0)} "
            f"running {counts.get('running', 0)} retrying {counts.get('waiting', 0)} "
            f"| {rate:.1f}/s elapsed {_fmt_s(elapsed)} ETA {_fmt_s(eta) if eta is not None else '--:--'}")


class Progress:
    """Redraws in place on a terminal; on a log file prints a line every ``log_every`` s."""

    def __init__(self, total: int, stream: TextIO | None = None, log_every: float = 10.0, skipped: int = 0):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every = log_every
        self.t0 = time.monotonic()
        self._last_log = -1e9
        self._last_line = ""
        self.skipped = skipped

    def __call__(self, counts: dict, failures: list) -> None:
        now = time.monotonic()
        line = bar_line(counts, self.total, now - self.t0)
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
            self.stream.flush()
        elif now - self._last_log >= self.log_every or counts.get("succeeded", 0) + counts.get("failed", 0) == \
                self.total:
            if line != self._last_line:
                self.stream.write(line + "\n")
                self.stream.flush()
            self._last_log = now
        self._last_line = line

    def close(self) -> None:
        if self.tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


def summary_table(rows: list[dict], *, skipped: int, makespan_s: float, lost_workers: list[int]) -> str:
    """The end-of-run table: counts, then each failed task with its attempts and last error."""
    ok = [r for r in rows if r["state"] == "succeeded"]
    bad = [r for r in rows if r["state"] == "failed"]
    retried = sum(1 for r in ok if r["attempts"] > 1)
    lines = ["farm summary",
             f"  tasks run      {len(rows)}",
             f"  succeeded      {len(ok)}" + (f" ({retried} after retries)" if retried else ""),
             f"  failed         {len(bad)}",
             f"  skipped (done) {skipped}",
             f"  makespan       {makespan_s:.2f} s"]
    if lost_workers:
        lines.append(f"  lost workers   {', '.join(str(w) for w in lost_workers)} (their tasks were requeued)")
    if bad:
        w = max(4, max(len(r["id"]) for r in bad))
        lines.append("")
        lines.append(f"  {'task'.ljust(w)}  tries  last error")
        for r in bad:
            err = (r.get("error") or "").replace("\n", " ")
            lines.append(f"  {r['id'].ljust(w)}  {r['attempts']:>5}  {err[:160]}")
    return "\n".join(lines)
