"""Two real MPI ranks read encrypted shards: each loads the key file itself (only the path is
shared) and every rank's batches equal those of the plaintext copy.

Run by scripts/test.sh as ``mpirun -np 2 python -m pytest --with-mpi -m mpi``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

pytest.importorskip("cryptography")


@pytest.mark.mpi(min_size=2)
def test_encrypted_loader_equals_plaintext_on_two_ranks():
    from mpi4py import MPI

    from hpctrain.data.loader import ShardLoader
    from hpctrain.data.shards import ShardWriter
    from hpctrain.secure import keyring
    from hpctrain.secure.keys import keygen

    comm = MPI.COMM_WORLD
    root = None
    if comm.rank == 0:  # only rank 0 writes shared files
        root = tempfile.mkdtemp(prefix="hpctrain-mpi-secure-")
        key = keygen(os.path.join(root, "k"))
        rng = np.random.default_rng(1)
        x = rng.standard_normal((1500, 8)).astype(np.float32)
        y = rng.integers(0, 4, 1500)
        for name, k in (("plain", None), ("enc", key)):
            with ShardWriter(os.path.join(root, name), feature_names=None, sample_shape=(8,), rows_per_shard=170,
                             key=k) as w:
                w.add(x, y)
    root = comm.bcast(root, root=0)
    keyring.clear()
    keyring.add(os.path.join(root, "k"))
    try:
        for epoch in (0, 1):
            got = {}
            for name in ("plain", "enc"):
                L = ShardLoader(os.path.join(root, name), comm.rank, comm.size, 32, seed=7, prefetch=2,
                                buffer_rows=256)
                L.set_epoch(epoch)
                got[name] = [(bx.numpy().copy(), by.numpy().copy()) for bx, by in L]
            assert len(got["plain"]) == len(got["enc"]) > 0
            for (a, ay), (b, by) in zip(got["plain"], got["enc"]):
                np.testing.assert_array_equal(a, b)
                np.testing.assert_array_equal(ay, by)
            counts = comm.allgather(len(got["enc"]))
            assert len(set(counts)) == 1
    finally:
        keyring.clear()
        comm.barrier()
        if comm.rank == 0:
            shutil.rmtree(root, ignore_errors=True)
