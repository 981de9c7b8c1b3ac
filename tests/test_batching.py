"""The micro-batcher's closing rule, without a server: a batch closes when full, when the delay
is up, or as soon as it holds as many rows as the previous batch and nothing more is queued."""

import asyncio
import time

import numpy as np
import pytest

from hpctrain.serve.batching import MicroBatcher, next_expected


def test_next_expected_counts_the_batch_and_what_queued_behind_it():
    assert next_expected(16, 0) == 16
    assert next_expected(1, 0) == 1
    assert next_expected(64, 5) == 69  # clamped by max_batch where it is used
    assert next_expected(0, 0) == 1


def _run(coro):
    return asyncio.run(coro)


def test_a_lone_client_does_not_wait_out_the_delay():
    sizes = []

    async def main():
        b = MicroBatcher(lambda x: (x * 2, None), max_batch=64, max_wait_s=0.5, on_batch=sizes.append)
        b.start()
        try:
            # first batch: nothing is known yet, so it waits the full delay for company
            t = time.perf_counter()
            await b.submit(np.ones((1, 2)))
            first = time.perf_counter() - t
            # then the same lone client again and again: each batch closes at once
            t = time.perf_counter()
            for _ in range(5):
                out, _ = await b.submit(np.ones((1, 2)))
                np.testing.assert_array_equal(out, 2 * np.ones((1, 2)))
            rest = (time.perf_counter() - t) / 5
        finally:
            await b.stop()
        return first, rest

    first, rest = _run(main())
    assert first >= 0.45, first
    assert rest < 0.1, rest  # far below the 0.5 s delay: no waiting for clients that are not there
    assert sizes == [1] * 6


def test_concurrent_clients_still_share_a_forward_pass():
    sizes = []

    async def main():
        b = MicroBatcher(lambda x: (x, None), max_batch=64, max_wait_s=0.2, on_batch=sizes.append)
        b.start()
        try:
            for _ in range(3):  # 8 clients that come back together, three rounds
                outs = await asyncio.gather(*(b.submit(np.full((1, 1), i)) for i in range(8)))
                assert [int(o[0][0, 0]) for o in outs] == list(range(8))  # each gets its own row back
        finally:
            await b.stop()

    _run(main())
    assert sizes == [8, 8, 8]


@pytest.mark.parametrize("max_batch,max_wait", [(0, 0.1), (4, -1)])
def test_bad_settings(max_batch, max_wait):
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda x: (x, None), max_batch=max_batch, max_wait_s=max_wait)


def test_serve_gc_tuning_freezes_the_loaded_heap():
    import gc

    from hpctrain.serve.server import GC_GEN0, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_GEN0
        assert gc.get_freeze_count() > 0  # what existed is out of every later collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
