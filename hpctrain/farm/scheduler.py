"""Placement and retry bookkeeping of the dispatcher. Pure: no MPI, no clock, no IO.

The dispatcher feeds it events (a worker joined, asked for work, finished a task, was
lost) with the current time, and sends whatever :meth:`Scheduler.assign` returns. Workers
pull: a worker is only given tasks when it has free resources, so a fast worker simply
comes back more often, which is what balances the load.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from hpctrain.farm.tasks import Task


@dataclass(slots=True, frozen=True)
class Resources:
    """What a worker offers, or what a task needs."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 0.0

    def fits_in(self, other: Resources) -> bool:
        # A small tolerance keeps float memory sums (0.1 + 0.2 ...) from refusing an exact fit.
        return self.cpus <= other.cpus and self.gpus <= other.gpus and self.mem_gb <= other.mem_gb + 1e-9

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus, self.mem_gb + other.mem_gb)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.gpus - other.gpus, self.mem_gb - other.mem_gb)

    def describe(self) -> str:
        return f"cpus={self.cpus} gpus={self.gpus} mem_gb={self.mem_gb:g}"


def needs(task: Task) -> Resources:
    return Resources(task.cpus, task.gpus, task.mem_gb)


@dataclass(slots=True)
class Attempt:
    """One try of one task, as the journal and summary keep it."""

    attempt: int
    worker: int
    ok: bool = False
    rc: int | None = None
    error: str = ""
    stderr_tail: str = ""
    elapsed_s: float = 0.0
    started: float = 0.0  # wall clock (epoch s) when the worker began the attempt


@dataclass(slots=True)
class TaskState:
    task: Task
    seq: int
    attempts: list[Attempt] = field(default_factory=list)
    state: str = "pending"  # pending | waiting (backoff) | running | succeeded | failed
    worker: int | None = None
    gpu_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class WorkerState:
    capacity: Resources
    gpu_ids: tuple[int, ...]
    max_tasks: int
    used: Resources = field(default_factory=lambda: Resources(0, 0, 0.0))
    running: set[str] = field(default_factory=set)
    free_gpus: list[int] = field(default_factory=list)
    alive: bool = True


@dataclass(slots=True)
class Assignment:
    task: Task
    attempt: int
    gpu_ids: tuple[int, ...]


class Scheduler:
    """Queue, placement, retries with exponential backoff, and end states."""

    def __init__(self, tasks: list[Task], *, retries: int, backoff: float = 1.0, backoff_max: float = 60.0):
        self.default_retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.states: dict[str, TaskState] = {}
        # Ready tasks grouped by resource shape: a worker looks at one head per shape rather
        # than scanning the whole queue, so placement stays cheap with 100k tasks.
        self._ready: dict[Resources, deque[tuple[int, str]]] = {}
        self._waiting: list[tuple[float, int, str]] = []  # (ready_at, seq, id) heap of backoffs
        self.workers: dict[int, WorkerState] = {}
        self.finished: list[str] = []  # end states in order, for the caller to journal
        for seq, t in enumerate(tasks):
            self.states[t.id] = TaskState(task=t, seq=seq)
            self._ready.setdefault(needs(t), deque()).append((seq, t.id))

    # workers -----------------------------------------------------------------
    def add_worker(self, wid: int, capacity: Resources, *, gpu_ids: tuple[int, ...] = (), max_tasks: int = 32) -> None:
        ids = tuple(gpu_ids) if gpu_ids else tuple(range(capacity.gpus))
        self.workers[wid] = WorkerState(capacity=capacity, gpu_ids=ids, max_tasks=max(1, max_tasks),
                                        free_gpus=list(ids))

    def live_workers(self) -> list[int]:
        return [w for w, s in self.workers.items() if s.alive]

    def lose_worker(self, wid: int, now: float, reason: str) -> list[str]:
        """Mark ``wid`` dead; its running tasks count a failed attempt and go back to the queue."""
        ws = self.workers[wid]
        ws.alive = False
        lost = sorted(ws.running)
        for tid in lost:
            self.finish(wid, tid, Attempt(attempt=len(self.states[tid].attempts) + 1, worker=wid, ok=False,
                                          error=reason), now)
        return lost

    # tasks -------------------------------------------------------------------
    def _promote(self, now: float) -> None:
        while self._waiting and self._waiting[0][0] <= now:
            _, seq, tid = heapq.heappop(self._waiting)
            st = self.states[tid]
            st.state = "pending"
            # A retry goes to the front of its shape's queue: it has waited long enough.
            self._ready.setdefault(needs(st.task), deque()).appendleft((-1 - seq, tid))

    def assign(self, wid: int, now: float) -> list[Assignment]:
        """Tasks for worker ``wid`` that fit its free resources, oldest first."""
        self._promote(now)
        ws = self.workers[wid]
        if not ws.alive:
            return []
        out: list[Assignment] = []
        while len(ws.running) < ws.max_tasks:
            free = ws.capacity - ws.used
            best = None
            for shape, q in self._ready.items():
                if q and shape.fits_in(free) and (best is None or q[0][0] < best[1][0][0]):
                    best = (shape, q)
            if best is None:
                break
            shape, q = best
            _, tid = q.popleft()
            st = self.states[tid]
            st.state, st.worker = "running", wid
            st.gpu_ids = tuple(ws.free_gpus[:shape.gpus])
            del ws.free_gpus[:shape.gpus]
            ws.used = ws.used + shape
            ws.running.add(tid)
            out.append(Assignment(task=st.task, attempt=len(st.attempts) + 1, gpu_ids=st.gpu_ids))
        return out

    def finish(self, wid: int, tid: str, attempt: Attempt, now: float) -> str | None:
        """Record an attempt's end. Returns the new state, or None for a stale report
        (a worker that was declared lost reporting late)."""
        st = self.states.get(tid)
        ws = self.workers.get(wid)
        if st is None or ws is None or st.state != "running" or st.worker != wid or tid not in ws.running:
            return None
        ws.running.discard(tid)
        ws.used = ws.used - needs(st.task)
        ws.free_gpus.extend(st.gpu_ids)
        st.attempts.append(attempt)
        st.worker, st.gpu_ids = None, ()
        allowed = st.task.retries if st.task.retries is not None else self.default_retries
        if attempt.ok:
            st.state = "succeeded"
        elif len(st.attempts) <= allowed:
            st.state = "waiting"
            # the exponent is capped: 2 ** 1100 does not convert to a float (OverflowError)
            delay = min(self.backoff * 2.0 ** min(len(st.attempts) - 1, 1000), self.backoff_max)
            heapq.heappush(self._waiting, (now + delay, st.seq, tid))
            return "retry"
        else:
            st.state = "failed"
        self.finished.append(tid)
        return st.state

    def fail_unplaceable(self) -> list[str]:
        """Fail queued tasks that fit no live worker even when it is idle; returns their ids."""
        caps = [self.workers[w].capacity for w in self.live_workers()]
        out = []
        for shape, q in self._ready.items():
            if any(shape.fits_in(c) for c in caps):
                continue
            biggest = max(caps, key=lambda c: (c.cpus, c.gpus, c.mem_gb)).describe() if caps else "none"
            while q:
                _, tid = q.popleft()
                st = self.states[tid]
                st.state = "failed"
                st.attempts.append(Attempt(attempt=0, worker=-1, error=(
                    f"needs {shape.describe()} but no live worker has that much (largest: {biggest}); "
                    "give workers more (--cpus-per-worker/--gpus-per-worker/--mem-per-worker, "
                    "fewer --workers-per-node) or lower the task's request")))
                self.finished.append(tid)
                out.append(tid)
        # Waiting (backoff) tasks are checked when they come back to the queue.
        return out

    def fail_remaining(self, why: str) -> None:
        """End every task not yet running or ended (e.g. no worker is left to run them)."""
        for tid, st in self.states.items():
            if st.state in ("pending", "waiting"):
                st.state = "failed"
                st.attempts.append(Attempt(attempt=0, worker=-1, error=why))
                self.finished.append(tid)
        self._ready.clear()
        self._waiting.clear()

    def idle_while_waiting(self) -> tuple[dict[int, Resources], list[Resources]]:
        """(free resources of each live worker that runs nothing, the shapes of the queued tasks):
        what the farm_idle alert (hpctrain.monitor.alerts) looks at."""
        idle = {w: s.capacity - s.used for w, s in self.workers.items() if s.alive and not s.running}
        return idle, [shape for shape, q in self._ready.items() if q]

    # progress ----------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        return self._waiting[0][0] if self._waiting else None

    def counts(self) -> dict[str, int]:
        c = {"pending": 0, "waiting": 0, "running": 0, "succeeded": 0, "failed": 0}
        for st in self.states.values():
            c[st.state] += 1
        return c

    def done(self) -> bool:
        return len(self.finished) == len(self.states)
