"""Message endpoints for the farm loops: MPI point-to-point between ranks, or queues
between threads of one process (when not started under a launcher).

Point-to-point rather than ``mpi4py.futures``: the dispatcher must place each task on a
worker whose free cpus/gpus/memory fit it, hand GPU ids to it, keep several tasks in
flight per worker and notice a silent worker. ``MPIPoolExecutor`` hides which worker runs
what and spawns or splits its own pool; a 30-line tagged send/probe loop is simpler than
working around that.

Waiting: OpenMPI's blocking receive spins a core at 100 %, which starves the tasks on a
small node. Both loops probe and nap instead: right after a send they yield (a reply is
likely imminent), then nap with backoff up to ``max_sleep``; a worker's nap is cut short
the moment one of its tasks finishes. See docs/farm.md for the measurements behind this.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable

TAG = 17
_MIN_SLEEP = 20e-6
_MAX_SLEEP = 2e-3
DISPATCHER_MAX_SLEEP = 5e-4
_SPIN_S = float(os.environ.get("HPCTRAIN_FARM_SPIN_S", "0.002"))


class MpiEndpoint:
    """``max_sleep``: the longest nap between probes while idle, i.e. the worst added latency of
    a message that arrives then. The dispatcher uses a short one (it is what a finished task
    waits for); a worker a longer one, since a task's completion wakes it at once (``nudge``)."""

    def __init__(self, comm, max_sleep: float = _MAX_SLEEP):
        from mpi4py import MPI

        self.comm = comm
        self._status = MPI.Status()
        self._any = MPI.ANY_SOURCE
        self._pending: list = []
        self._awaiting_since = float("-inf")
        self._max_sleep = max_sleep
        self._bell = threading.Event()

    def send(self, dest: int, msg: tuple) -> None:
        # isend: two ranks sending large messages to each other at once must not deadlock.
        self._pending.append((dest, self.comm.isend(msg, dest=dest, tag=TAG)))
        self._awaiting_since = time.monotonic()
        if len(self._pending) > 64:
            self._pending = [(d, r) for d, r in self._pending if not r.Test()]

    def poll(self, timeout: float, wake: Callable[[], bool] | None = None) -> list[tuple[int, tuple]]:
        start = time.monotonic()
        deadline = start + timeout
        delay = _MIN_SLEEP
        while True:
            out = []
            while self.comm.Iprobe(source=self._any, tag=TAG, status=self._status):
                src = self._status.Get_source()
                out.append((src, self.comm.recv(source=src, tag=TAG)))
            if out:
                self._awaiting_since = float("-inf")
                return out
            if wake is not None and wake():
                return out
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return out
            if now - self._awaiting_since < _SPIN_S:
                # We sent something and a reply is likely imminent: yield rather than sleep (a
                # sleep costs 0.1-0.5 ms of wake-up latency on a loaded node). Only until the
                # reply: spinning on, this thread would keep the GIL from the task threads.
                os.sched_yield()
                continue
            # A nap that a local event (a task finishing) cuts short.
            if self._bell.wait(min(delay, left)):
                self._bell.clear()
            delay = min(delay * 2, self._max_sleep)

    def nudge(self) -> None:
        """Wake a ``poll`` in progress (called from task threads when one finishes)."""
        self._bell.set()

    def flush(self, timeout: float = 10.0, skip: set[int] | frozenset = frozenset()) -> None:
        """Wait (bounded) for sends to complete, so 'stop' is delivered before we exit.
        Sends to ranks in ``skip`` (dead ones: they never complete) are abandoned."""
        self._pending = [(d, r) for d, r in self._pending if d not in skip]
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self._pending = [(d, r) for d, r in self._pending if not r.Test()]
            if self._pending:
                time.sleep(1e-3)


class LocalHub:
    """Inboxes of the dispatcher (0) and the in-process workers (1..n)."""

    def __init__(self, n_workers: int):
        self.inbox = {i: queue.SimpleQueue() for i in range(n_workers + 1)}
        self.bell = {i: threading.Event() for i in range(n_workers + 1)}

    def endpoint(self, me: int) -> LocalEndpoint:
        return LocalEndpoint(self, me)


class LocalEndpoint:
    def __init__(self, hub: LocalHub, me: int):
        self.hub, self.me = hub, me

    def send(self, dest: int, msg: tuple) -> None:
        self.hub.inbox[dest].put((self.me, msg))
        self.hub.bell[dest].set()

    def nudge(self) -> None:
        self.hub.bell[self.me].set()

    def poll(self, timeout: float, wake: Callable[[], bool] | None = None) -> list[tuple[int, tuple]]:
        box, bell = self.hub.inbox[self.me], self.hub.bell[self.me]
        deadline = time.monotonic() + timeout
        while True:
            bell.clear()
            out = []
            while not box.empty():
                out.append(box.get())
            if out or (wake is not None and wake()):
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            bell.wait(left)

    def flush(self, timeout: float = 0.0, skip: set[int] | frozenset = frozenset()) -> None:
        pass
