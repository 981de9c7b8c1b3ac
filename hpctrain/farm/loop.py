"""The dispatcher and worker loops, written against a tiny message endpoint so the same
code runs over MPI (rank 0 dispatches, other ranks work) or in one process (threads).

Protocol (all messages are small tuples):

- dispatcher -> worker: ``("run", [(wire, attempt, gpu_ids, timeout), ...])``, ``("beat",)``, ``("stop",)``
- worker -> dispatcher: ``("done", task_id, attempt, result)``, ``("beat",)``

The dispatcher owns all state (the pure :class:`Scheduler`); a worker only runs what it is
sent and reports back, so losing a worker loses nothing but its running tasks. Both
sides send a heartbeat when otherwise silent, so each can tell the other is gone.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from hpctrain.farm import journal
from hpctrain.farm.runner import GROUPS, run_attempt
from hpctrain.farm.scheduler import Attempt, Scheduler


class Endpoint(Protocol):
    def send(self, dest: int, msg: tuple) -> None: ...

    def poll(self, timeout: float, wake: Callable[[], bool] | None = None) -> list[tuple[int, tuple]]: ...


@dataclass(kw_only=True, slots=True)
class LoopOptions:
    out: Path
    timeout: float | None = None
    kill_grace: float = 2.0
    max_tasks: int = 32
    heartbeat: float = 60.0  # seconds of silence after which the other side is declared lost
    progress: Callable[[dict, list], None] | None = None
    progress_every: float = 0.5
    # called with each new alert (hpctrain.monitor.alerts.Alert) of the dispatcher: a worker idle
    # while tasks wait that it cannot hold
    alert: Callable[[object], None] | None = None
    alert_cooldown_s: float = 300.0
    stop_flag: threading.Event = field(default_factory=threading.Event)


# dispatcher -------------------------------------------------------------------------------

@dataclass(slots=True)
class DispatchResult:
    interrupted: bool
    lost_workers: list[int]
    makespan_s: float


class Dispatcher:
    """Rank 0's loop: feed the scheduler the workers' reports, send it their assignments,
    journal every end state the moment it happens."""

    def __init__(self, ep: Endpoint, sched: Scheduler, opts: LoopOptions):
        self.ep, self.sched, self.opts = ep, sched, opts
        self.lost: list[int] = []
        self.failures: list[str] = []
        self.settled = 0
        self.writer: journal.JournalWriter | None = None
        from hpctrain.monitor.alerts import Cooldown

        self.cooldown = Cooldown(opts.alert_cooldown_s)

    def give_work(self, wid: int, now: float) -> None:
        batch = self.sched.assign(wid, now)
        if batch:
            t = self.opts.timeout
            self.ep.send(wid, ("run", [(a.task.to_wire(), a.attempt, a.gpu_ids,
                                        a.task.timeout if a.task.timeout is not None else t) for a in batch]))

    def settle(self) -> None:
        while self.sched.finished:
            st = self.sched.states[self.sched.finished.pop(0)]
            self.writer.append(journal.make_record(st.task, st.state, [_attempt_dict(a) for a in st.attempts]))
            if st.state == "failed":
                self.failures.append(st.task.id)
            self.settled += 1

    def on_done(self, src: int, msg: tuple, now: float) -> None:
        _, tid, attempt_no, res = msg
        self.sched.finish(src, tid, Attempt(attempt=attempt_no, worker=src, ok=bool(res["ok"]), rc=res.get("rc"),
                                            error=res.get("error", ""), stderr_tail=res.get("stderr_tail", ""),
                                            elapsed_s=float(res.get("elapsed_s", 0.0)),
                                            started=float(res.get("started", 0.0))), now)
        self.give_work(src, now)

    def check_idle(self, now: float) -> None:
        """Alert on workers left idle by placement (after every worker was offered work)."""
        if self.opts.alert is None:
            return
        from hpctrain.monitor.alerts import farm_idle

        idle, shapes = self.sched.idle_while_waiting()
        for al in farm_idle(idle, shapes, lambda need, free: need.fits_in(free), describe=lambda r: r.describe()):
            if self.cooldown.admit(al, now):
                self.opts.alert(al)

    def check_heartbeats(self, last_seen: dict[int, float], now: float) -> None:
        for w in self.sched.live_workers():
            self.ep.send(w, ("beat",))
        newly = [w for w in self.sched.live_workers() if now - last_seen[w] > self.opts.heartbeat]
        for w in newly:
            self.lost.append(w)
            self.sched.lose_worker(w, now, f"worker rank {w} sent nothing for {self.opts.heartbeat:g} s and was "
                                           "declared lost; its task was requeued")
        if newly:
            if not self.sched.live_workers():
                self.sched.fail_remaining("every worker was lost; rerun the same command to resume")
            self.sched.fail_unplaceable()

    def run(self) -> DispatchResult:
        self.writer = journal.JournalWriter(self.opts.out)
        try:
            return self._loop()
        finally:
            self.writer.close()

    def _loop(self) -> DispatchResult:
        sched, opts = self.sched, self.opts
        t0 = now = time.monotonic()
        last_seen = {w: now for w in sched.workers}
        beat_every = max(0.05, opts.heartbeat / 4)
        last_beat, last_progress = now, 0.0
        sched.fail_unplaceable()
        self.settle()
        for w in sched.live_workers():
            self.give_work(w, now)
        while self.settled < len(sched.states):
            if opts.stop_flag.is_set():
                return DispatchResult(True, self.lost, time.monotonic() - t0)
            wake_at = min(x for x in (sched.next_wakeup(), last_beat + beat_every, now + 0.25) if x is not None)
            msgs = self.ep.poll(max(0.0, wake_at - time.monotonic()))
            now = time.monotonic()
            for src, msg in msgs:
                if src not in sched.workers or not sched.workers[src].alive:
                    continue  # a worker declared lost came back late; its tasks were already requeued
                last_seen[src] = now
                if msg[0] == "done":
                    self.on_done(src, msg, now)
            wake = sched.next_wakeup()
            if not msgs or (wake is not None and wake <= now):
                # Retries came off backoff, or we are idle: any worker may have room now.
                for w in sched.live_workers():
                    self.give_work(w, now)
                sched.fail_unplaceable()
                self.check_idle(now)
            if now - last_beat >= beat_every:
                last_beat = now
                self.check_heartbeats(last_seen, now)
            self.settle()
            if opts.progress and now - last_progress >= opts.progress_every:
                last_progress = now
                opts.progress(sched.counts(), self.failures)
        for w in sched.live_workers():
            self.ep.send(w, ("stop", {"peers_lost": bool(self.lost)}))
        if opts.progress:
            opts.progress(sched.counts(), self.failures)
        return DispatchResult(False, self.lost, time.monotonic() - t0)


def dispatch(ep: Endpoint, sched: Scheduler, opts: LoopOptions) -> DispatchResult:
    """Run until every task reached an end state (or the stop flag is set)."""
    return Dispatcher(ep, sched, opts).run()


def _attempt_dict(a: Attempt) -> dict:
    return {"attempt": a.attempt, "worker": a.worker, "ok": a.ok, "rc": a.rc, "error": a.error,
            "stderr_tail": a.stderr_tail, "elapsed_s": round(a.elapsed_s, 6), "started": round(a.started, 6)}


# worker -----------------------------------------------------------------------------------

STOPPED_PEERS_LOST = 5  # work() ended normally, but some rank died: skip MPI_Finalize (see driver)

def work(ep: Endpoint, rank: int, opts: LoopOptions) -> int:
    """Run what the dispatcher (rank 0) sends until it says stop. Returns an exit code."""
    done: queue.SimpleQueue = queue.SimpleQueue()
    last_sent = last_heard = time.monotonic()
    beat_every = max(0.05, opts.heartbeat / 4)
    nudge = getattr(ep, "nudge", lambda: None)

    def run_one(wire: dict, attempt: int, gpu_ids, timeout) -> None:
        try:
            res = run_attempt(wire, attempt=attempt, out=opts.out, worker=rank, gpu_ids=tuple(gpu_ids),
                              timeout=timeout, kill_grace=opts.kill_grace)
        except BaseException as e:  # noqa: BLE001 - e.g. the result directory is not writable
            res = {"ok": False, "rc": None, "error": f"worker error: {type(e).__name__}: {e}"[:500],
                   "stderr_tail": "", "elapsed_s": 0.0}
        done.put((wire["id"], attempt, res))
        nudge()

    # Threads are reused: starting one per task costs ~0.1 ms, a tenth of a no-op task's budget.
    pool = ThreadPoolExecutor(max_workers=opts.max_tasks, thread_name_prefix=f"farm-w{rank}")
    try:
        while True:
            while not done.empty():
                tid, attempt, res = done.get()
                ep.send(0, ("done", tid, attempt, res))
                last_sent = time.monotonic()
            if opts.stop_flag.is_set():
                return 130
            msgs = ep.poll(beat_every, wake=lambda: not done.empty())
            now = time.monotonic()
            for _, msg in msgs:
                last_heard = now
                if msg[0] == "run":
                    for wire, attempt, gpu_ids, timeout in msg[1]:
                        pool.submit(run_one, wire, attempt, gpu_ids, timeout)
                elif msg[0] == "stop":
                    return STOPPED_PEERS_LOST if len(msg) > 1 and msg[1].get("peers_lost") else 0
            if now - last_sent >= beat_every:
                ep.send(0, ("beat",))
                last_sent = now
            if now - last_heard > opts.heartbeat:
                return 3  # the dispatcher is gone; the finally below kills our tasks
    finally:
        GROUPS.kill_all()
        # In-process function tasks cannot be killed; do not wait for them (the process is exiting).
        pool.shutdown(wait=False, cancel_futures=True)


def install_stop_handlers(flag: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``flag``; the loops notice it between messages. Returns an undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}

    def handler(signum, frame):
        flag.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)

    def undo() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return undo
