"""ShardLoader over several epochs: every sample exactly once per epoch, on every world size.

The shards here are cut into many small HDF5 chunks (32 rows) and read in slabs of two
chunks, so each shard becomes several slabs whose order is permuted, and the shuffle buffer
(256 rows) is refilled many times per epoch: the windowed shuffle's whole path runs, not a
single-slab special case. Ranks are simulated in one process with the loader's own
rank/world_size arguments (the plan is pure arithmetic, identical on every rank).
"""

from __future__ import annotations

import numpy as np
import pytest

from hpctrain.data.loader import ShardLoader, slabs_of
from hpctrain.data.shards import ShardWriter

SIZES = [1000, 877, 1500, 640, 333, 1200]  # 5550 rows, uneven on purpose
CHUNK_ROWS, SLAB_CHUNKS, BUFFER_ROWS, BATCH, EPOCHS = 32, 2, 256, 7, 4


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Sample i has x[i] = [i, 2i, 3i] and y = i, so ids are unique and payloads checkable."""
    root = tmp_path_factory.mktemp("epochs") / "s"
    n = sum(SIZES)
    ids = np.arange(n)
    x = (ids[:, None] * np.arange(1, 4)[None, :]).astype(np.float32)
    with ShardWriter(root, feature_names=None, sample_shape=(3,), rows_per_shard=max(SIZES),
                     compression="none") as w:
        w.chunk_rows = CHUNK_ROWS  # small chunks: every shard spans many slabs
        w.rows_per_shard = 10**9
        start = 0
        for s in SIZES:
            w.add(x[start:start + s], ids[start:start + s])
            w._flush("train", s)
            start += s
    return root


def one_epoch(root, world, drop_last, epoch):
    """Per rank: the loader, and the ids of every batch it yielded in ``epoch``."""
    out = []
    for r in range(world):
        L = ShardLoader(root, r, world, BATCH, seed=3, drop_last=drop_last, buffer_rows=BUFFER_ROWS,
                        slab_chunks=SLAB_CHUNKS)
        L.set_epoch(epoch)
        batches = []
        for x, y in L:
            assert tuple(x.shape) == (BATCH, 3) and tuple(y.shape) == (BATCH,)
            ids = y.numpy().copy()
            np.testing.assert_array_equal(x.numpy()[:, 2], (3 * ids).astype(np.float32))  # rows stay whole
            batches.append(ids)
        out.append((L, batches))
    return out


def rank_rows(L, rank):
    """The row ids the epoch's plan assigns to ``rank`` (the manifest order is the id order)."""
    starts = np.cumsum([0] + SIZES)
    return np.concatenate([np.arange(starts[p.shard] + p.start, starts[p.shard] + p.stop)
                           for p in L.plan().pieces[rank]])


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_every_sample_exactly_once_per_epoch(shard_dir, world, drop_last):
    total = sum(SIZES)
    orders = []
    for epoch in range(EPOCHS):
        ranks = one_epoch(shard_dir, world, drop_last, epoch)
        counts = {len(b) for _, b in ranks}
        assert len(counts) == 1, f"ranks yield different batch counts {counts}: a collective would hang"
        n_batches = counts.pop()
        assert n_batches == len(ranks[0][0]) > 0
        seen = [np.concatenate(b) for _, b in ranks]
        for r, (L, _) in enumerate(ranks):
            # the windowed shuffle really runs: each rank reads several permuted slabs per shard
            slabs = slabs_of(L.plan().pieces[r], CHUNK_ROWS * SLAB_CHUNKS)
            assert len(slabs) >= 3 * len(L.plan().pieces[r])
        allids = np.concatenate(seen)
        if drop_last:
            # no sample twice anywhere; the dropped tail is below world * batch
            assert len(allids) == len(np.unique(allids)) == world * n_batches * BATCH
            assert total - len(allids) < world * BATCH
        else:
            # every sample at least once; a repeat only pads a rank with its own rows
            np.testing.assert_array_equal(np.unique(allids), np.arange(total))
            assert len(allids) == world * n_batches * BATCH
            for r, (L, _) in enumerate(ranks):
                own = rank_rows(L, r)
                uniq, cnt = np.unique(seen[r], return_counts=True)
                np.testing.assert_array_equal(uniq, np.sort(own))  # exactly the rank's share
                assert int((cnt - 1).sum()) == len(seen[r]) - len(own)
            for a in range(world):  # shares are disjoint across ranks
                for b in range(a + 1, world):
                    assert not np.intersect1d(seen[a], seen[b]).size
        orders.append(seen[0])
    # each epoch is a different order (the seed depends on the epoch)
    for a in range(EPOCHS):
        for b in range(a + 1, EPOCHS):
            assert not np.array_equal(orders[a][:50], orders[b][:50])


def test_batches_mix_several_slabs(shard_dir):
    """Rows are permuted inside the buffer, so a batch is not one contiguous run: on average a
    batch of 7 draws from at least 3 of the 64-row slabs."""
    (L, batches), = one_epoch(shard_dir, 1, True, 0)
    slab_rows = CHUNK_ROWS * SLAB_CHUNKS
    starts = np.cumsum([0] + SIZES)
    shard_of = np.searchsorted(starts, np.arange(sum(SIZES)), side="right") - 1
    slab_id = shard_of * 10**6 + (np.arange(sum(SIZES)) - starts[shard_of]) // slab_rows
    distinct = [len(np.unique(slab_id[b])) for b in batches]
    assert np.mean(distinct) >= 3
