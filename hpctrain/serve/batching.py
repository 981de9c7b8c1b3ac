"""Dynamic micro-batching: concurrent requests are grouped for at most ``max_wait`` seconds
and up to ``max_batch`` rows, run as one forward pass, and answered one by one.

The loop follows the shape of Triton's dynamic batcher (a maximum queue delay) and LitServe's
batching loop: the first request opens a batch, the batch closes when it is full or the delay
has passed, and the forward pass runs in one worker thread so the event loop keeps accepting
(and queueing) requests meanwhile. A request with more rows than ``max_batch`` runs alone.
Unlike both, a batch also closes as soon as it holds as many rows as the previous one and
nothing more is queued: with one client, waiting out the delay only added latency (3.6 ms
against 1.0 ms for no batching, scripts/bench_serve.py at concurrency 1).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable

import numpy as np


class MicroBatcher:
    def __init__(self, fn: Callable[[np.ndarray], tuple[np.ndarray, Any]], *, max_batch: int, max_wait_s: float,
                 on_batch: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch={max_batch}, max_wait_s={max_wait_s}: need max_batch >= 1, max_wait_s >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch or (lambda n: None)
        self.on_depth = on_depth or (lambda n: None)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._depth = 0
        # How many rows to expect before the delay is up: the size of the last batch. Clients
        # that got their answers come back, so a batch of 16 is followed by about 16 requests;
        # after a batch of 1 (one client) nobody else is coming, and waiting is only latency.
        self._expect = max_batch
        # one thread: forward passes run one at a time, in order, off the event loop
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hpctrain-forward")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop (graceful shutdown calls this after the last request)."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._pool.shutdown(wait=True)

    @property
    def depth(self) -> int:
        """Rows waiting for a forward pass."""
        return self._depth

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """This request's rows of ``fn``'s output, and the tag ``fn`` returned with it (the
        model that computed them: a hot reload may swap models between two batches)."""
        fut = asyncio.get_running_loop().create_future()
        self._depth += len(x)
        self.on_depth(self._depth)
        self._queue.put_nowait((x, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        stopping = False
        while True:
            item = carry if carry is not None else await self._queue.get()
            carry = None
            if item is None:
                return
            batch, rows = [item], len(item[0])
            deadline = loop.time() + self.max_wait_s
            want = min(self.max_batch, self._expect)
            while rows < self.max_batch:
                if rows >= want and self._queue.empty():
                    break
                try:
                    # what is queued already is taken without a timer: wait_for costs a task and
                    # a timer handle per call, paid 63 times for a batch of 64
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if nxt is None:
                    stopping = True
                    break
                if rows + len(nxt[0]) > self.max_batch:
                    carry = nxt
                    break
                batch.append(nxt)
                rows += len(nxt[0])
            self._expect = next_expected(rows, self._queue.qsize())
            self._depth -= rows
            self.on_depth(self._depth)
            await self._run(loop, batch, rows)
            if stopping:  # the stop marker comes after the last request: nothing is left behind
                return

    async def _run(self, loop, batch: list, rows: int) -> None:
        xs = [x for x, _ in batch]
        try:
            x = xs[0] if len(xs) == 1 else np.concatenate(xs)
            out, tag = await loop.run_in_executor(self._pool, self.fn, x)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request, which answers 500
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.on_batch(rows)
        lo = 0
        for x, fut in batch:
            if not fut.done():  # the client may have gone away
                fut.set_result((out[lo:lo + len(x)], tag))
            lo += len(x)


def next_expected(rows: int, queued: int) -> int:
    """Rows the next batch waits for (pure): those of the batch just closed plus those already
    queued behind it (at least 1). Up to ``max_wait`` later a batch closes anyway."""
    return max(1, rows + queued)
