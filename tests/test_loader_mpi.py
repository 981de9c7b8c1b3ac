"""Two real MPI ranks: equal batch counts on uneven shards, so a per-batch collective never hangs.

Run by scripts/test.sh as ``mpirun -np 2 python -m pytest --with-mpi -m mpi``.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("drop_last", [True, False])
def test_equal_batch_counts_uneven_shards(drop_last):
    from mpi4py import MPI

    from hpctrain.data.loader import ShardLoader
    from hpctrain.data.shards import ShardWriter

    comm = MPI.COMM_WORLD
    root = None
    if comm.rank == 0:  # only rank 0 writes shared files
        root = tempfile.mkdtemp(prefix="hpctrain-mpi-shards-")
        sizes = [301, 17, 150, 5, 99]  # deliberately uneven: 572 rows
        ids = np.arange(sum(sizes))
        x = np.repeat(ids[:, None].astype(np.float32), 4, axis=1)
        with ShardWriter(root, feature_names=None, sample_shape=(4,), rows_per_shard=10**9,
                         compression="lzf") as w:
            start = 0
            for s in sizes:
                w.add(x[start:start + s], ids[start:start + s])
                w._flush("train", s)
                start += s
    root = comm.bcast(root, root=0)
    L = ShardLoader(root, comm.rank, comm.size, 8, seed=5, drop_last=drop_last, buffer_rows=64)
    for epoch in range(3):
        L.set_epoch(epoch)
        n = 0
        seen = []
        for x, y in L:
            # A collective per batch, as a trainer does: uneven counts would hang here.
            total = comm.allreduce(int(y.numel()), op=MPI.SUM)
            assert total == 8 * comm.size
            assert np.array_equal(x.numpy()[:, 0], y.numpy().astype(np.float32))
            seen.append(y.numpy())
            n += 1
        counts = comm.allgather(n)
        assert len(set(counts)) == 1 and counts[0] == len(L) > 0
        every = np.concatenate(comm.allgather(np.concatenate(seen)))
        if drop_last:
            assert len(np.unique(every)) == len(every)  # nothing twice
            assert len(every) > 572 - comm.size * 8 - comm.size
        else:
            assert set(every.tolist()) == set(range(572))  # union is the whole dataset
    comm.Barrier()
    if comm.rank == 0:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
