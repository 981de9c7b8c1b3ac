"""The per-rank sampler: a daemon thread that writes one JSON line every ``monitor.interval_s``.

The training loop hands it each step's timings (:meth:`RankMonitor.add_step`: four floats under
a lock, no IO); the thread adds what psutil and NVML read and appends the record to
``RUN/monitor/rank-R.jsonl`` (this rank's own file: no other rank writes it). Records::

    {"kind": "start", "rank", "node", "pid", "time", "interval_s", "gpu": "<name>" | "no GPU: why"}
    {"kind": "sample", "rank", "node", "time", "step", "steps", "step_s", "data_wait_s", "exchange_s",
     "h2d_s", "cpu_pct", "rss_mb", "read_mb_s", "write_mb_s", "gpu": {...} | null}
    {"kind": "alert", "alert", "rank", "node", "message", "facts", "time"}
    {"kind": "end", "time"}

Timings are per-step means over the steps of the window (``steps`` of them; 0 when no step
ended in it, e.g. during evaluation). The thread never touches MPI: what needs the other ranks
(the straggler check, writing the journal, the hook) happens in :meth:`RankMonitor.gather`,
a collective the training loop calls at step boundaries.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from hpctrain.monitor import alerts as A
from hpctrain.rundir import RunDir


class _Window:
    """Sums of step timings since the last drain."""

    __slots__ = ("steps", "step_s", "data_wait_s", "exchange_s", "h2d_s")

    def __init__(self):
        self.steps = 0
        self.step_s = self.data_wait_s = self.exchange_s = self.h2d_s = 0.0

    def add(self, step_s: float, data_wait_s: float, exchange_s: float, h2d_s: float) -> None:
        self.steps += 1
        self.step_s += step_s
        self.data_wait_s += data_wait_s
        self.exchange_s += exchange_s
        self.h2d_s += h2d_s

    def means(self) -> dict[str, Any]:
        n = self.steps
        if not n:
            return {"steps": 0, "step_s": None, "data_wait_s": None, "exchange_s": None, "h2d_s": None}
        return {"steps": n, "step_s": round(self.step_s / n, 7), "data_wait_s": round(self.data_wait_s / n, 7),
                "exchange_s": round(self.exchange_s / n, 7), "h2d_s": round(self.h2d_s / n, 7)}

    def busy_s(self) -> float | None:
        """Mean time per step this rank spent on its own work: everything but the exchange wait."""
        return (self.step_s - self.exchange_s) / self.steps if self.steps else None


def _warn(msg: str) -> None:
    print(f"hpctrain train: warning: {msg}", file=sys.stderr, flush=True)


def run_hook(argv: list[str], alert: dict, timeout_s: float, warn: Callable[[str], None] = _warn) -> threading.Thread:
    """Run the alert hook in the background (argv, no shell; the alert as JSON in $HPCTRAIN_ALERT),
    so a slow hook never stalls training; a failing one is a warning, not an error."""
    import subprocess

    def go() -> None:
        env = {**os.environ, "HPCTRAIN_ALERT": json.dumps(alert), "HPCTRAIN_ALERT_KIND": str(alert.get("alert"))}
        try:
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout_s, check=False)
        except FileNotFoundError:
            warn(f"monitor.hook: {argv[0]!r} not found; fix monitor.hook (an argv list, e.g. [notify-send, x])")
            return
        except subprocess.TimeoutExpired:
            warn(f"monitor.hook: {argv!r} ran past monitor.hook_timeout_s={timeout_s:g} s and was killed")
            return
        except OSError as e:
            warn(f"monitor.hook: cannot run {argv!r}: {e}")
            return
        if p.returncode != 0:
            last = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
            warn(f"monitor.hook: {argv!r} exited {p.returncode}: {last[0]}")

    t = threading.Thread(target=go, name="hpctrain-monitor-hook", daemon=True)
    t.start()
    return t


class RankMonitor:
    """Sampling and alerts of one rank. ``start()``, ``add_step()`` per step, ``gather()`` every
    ``cfg.gather_every_steps`` steps on every rank, ``close()`` at the end (in a ``finally``)."""

    def __init__(self, cfg: Any, run_dir: Path, *, rank: int, node: str, cuda_index: int | None = None,
                 journal: bool | None = None, warn: Callable[[str], None] = _warn, clock=time.time):
        self.cfg, self.rank, self.node, self.warn, self.clock = cfg, rank, node, warn, clock
        self.rd = RunDir(run_dir)
        self.path = self.rd.monitor_samples(rank)
        self.cuda_index = cuda_index
        # Plain 'hpctrain train' runs have no event journal; creating one would make the run dir
        # look like a submitted one to 'hpctrain status', so alerts then stay in the sample files.
        self.journal = self.rd.events.is_file() if journal is None else journal
        self._lock = threading.Lock()  # the windows and the pending alerts (training thread vs sampler)
        self._sampling = threading.RLock()  # one sample at a time, one writer of the file at a time
        self._win = _Window()   # since the last sample
        self._gwin = _Window()  # since the last gather
        self._history: deque = deque(maxlen=max(cfg.leak_window, 3))
        self._pending: list[dict] = []
        self._cooldown = A.Cooldown(cfg.cooldown_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = None
        self._gpu = None
        self.step = 0
        self.hooks: list[threading.Thread] = []

    # -- called by the training loop -----------------------------------------------------------
    def add_step(self, step: int, step_s: float, data_wait_s: float, exchange_s: float, h2d_s: float) -> None:
        with self._lock:
            self.step = step
            self._win.add(step_s, data_wait_s, exchange_s, h2d_s)
            self._gwin.add(step_s, data_wait_s, exchange_s, h2d_s)

    def start(self) -> None:
        from hpctrain.monitor.probes import GpuProbe, ProcessProbe, nvml_index

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = ProcessProbe()
        if self.cuda_index is None:
            gpu_note = "no GPU: this rank trains on the CPU"
        else:
            self._gpu, gpu_note = GpuProbe.open(nvml_index(self.cuda_index))
        self._write({"kind": "start", "rank": self.rank, "node": self.node, "pid": os.getpid(),
                     "time": round(self.clock(), 3), "interval_s": self.cfg.interval_s, "gpu": gpu_note})
        self._thread = threading.Thread(target=self._run, name=f"hpctrain-monitor-{self.rank}", daemon=True)
        self._thread.start()

    def gather(self, comm) -> list[A.Alert]:
        """Collective (every rank, same step): the ranks' own step times and pending alerts to rank
        0, which checks for stragglers and reports every new alert. Returns what rank 0 reported."""
        with self._lock:
            busy, steps = self._gwin.busy_s(), self._gwin.steps
            self._gwin = _Window()
            pending, self._pending = self._pending, []
        got = comm.gather({"rank": self.rank, "node": self.node, "busy_s": busy, "steps": steps, "alerts": pending})
        if comm.rank != 0 or got is None:
            return []
        got = sorted(got, key=lambda g: g["rank"])
        reported = [A.Alert.from_record(a) for g in got for a in g["alerts"]]
        now = self.clock()
        for al in A.stragglers([g["busy_s"] for g in got], [g["node"] for g in got], self.cfg,
                               [g["steps"] for g in got]):
            if self._cooldown.admit(al, now):
                self._write({**al.as_record(), "time": round(now, 3), "step": self.step})
                reported.append(al)
        for al in reported:
            self._report(al)
        return reported

    def close(self) -> None:
        """Stop the thread, take a last sample of the steps since the previous one, close NVML."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.cfg.interval_s))
        self._thread = None
        if self._win.steps:
            self.sample()
        self._write({"kind": "end", "time": round(self.clock(), 3)})
        if self._gpu is not None:
            self._gpu.close()

    def flush(self) -> None:
        """A sample now (the end of the run: its alerts then reach the last :meth:`gather`)."""
        self.sample()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.cfg.interval_s):
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - monitoring must never end the training run
                self.warn(f"monitor: rank {self.rank}: sampling stopped ({type(e).__name__}: {e})")
                return

    def sample(self) -> dict:
        with self._sampling:
            return self._sample()

    def _sample(self) -> dict:
        with self._lock:
            win, self._win = self._win, _Window()
            step = self.step
        rec: dict[str, Any] = {"kind": "sample", "rank": self.rank, "node": self.node, "time": round(self.clock(), 3),
                               "step": step, **win.means()}
        rec.update(self._proc.read())
        rec["gpu"] = self._gpu.read() if self._gpu is not None else None
        self._write(rec)
        self._history.append(rec)
        self._check(rec)
        return rec

    def _check(self, rec: dict) -> None:
        recent = list(self._history)
        found = [A.input_bound(recent[-3:], self.cfg, rank=self.rank, node=self.node),
                 A.gpu_memory(rec, self.cfg, rank=self.rank, node=self.node),
                 A.rss_leak(recent, self.cfg, rank=self.rank, node=self.node)]
        now = self.clock()
        for al in found:
            if al is not None and self._cooldown.admit(al, now):
                out = {**al.as_record(), "time": round(now, 3), "step": rec["step"]}
                self._write(out)
                with self._lock:
                    self._pending.append(out)

    # -- output ----------------------------------------------------------------------------------
    def _write(self, rec: dict) -> None:
        from hpctrain.fileio import append_jsonl

        # no fsync: a sample lost in a crash costs nothing, an fsync per sample costs the disk
        with self._sampling:
            append_jsonl(self.path, rec, fsync=False)

    def _report(self, al: A.Alert) -> None:
        """Rank 0: the warning line, the journal event, the hook."""
        self.warn(al.message)
        rec = al.as_record()
        if self.journal:
            from hpctrain.slurm import journal

            journal.record(self.rd.path, "alert", alert=al.kind, rank=al.rank, node=al.node, message=al.message,
                           facts=al.facts)
        if self.cfg.hook:
            self.hooks.append(run_hook(list(self.cfg.hook), rec, self.cfg.hook_timeout_s, self.warn))
