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
@pytest.mark.parametrize("compression", ["lzf", None])  # lzf: through h5py; None: direct rows
def test_encrypted_loader_equals_plaintext_on_two_ranks(compression):
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
                             key=k, compression=compression) as w:
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
                if name == "enc":  # the reader the compression selects was the one used
                    assert all((direct is None) == (compression is not None)
                               for *_, direct in L._files.open.values())
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


@pytest.mark.mpi(min_size=2)
def test_encrypted_training_on_two_ranks_resumes_exactly_like_plaintext():
    """Encrypted shards (data.key) and checkpoints (checkpoint.encrypt) on 2 ranks: stopped at a
    step boundary and resumed, the final model equals the plaintext, uninterrupted run's."""
    import torch
    from mpi4py import MPI

    from hpctrain.data.shards import ShardWriter
    from hpctrain.secure import keyring
    from hpctrain.secure.keys import keygen
    from hpctrain.train.checkpoint import load
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    root = comm.bcast(tempfile.mkdtemp(prefix="hpctrain-mpi-secure-train-") if comm.rank == 0 else None)
    kp = os.path.join(root, "k")
    if comm.rank == 0:
        key = keygen(kp)
        rng = np.random.default_rng(0)
        centers = rng.normal(0, 3, size=(3, 5))
        y = {s: rng.integers(0, 3, n) for s, n in (("train", 256), ("val", 50))}
        x = {s: (centers[v] + rng.normal(0, 1, (len(v), 5))).astype(np.float32) for s, v in y.items()}
        for name, k in (("plain", None), ("enc", key)):
            with ShardWriter(os.path.join(root, name), feature_names=None, sample_shape=(5,), rows_per_shard=40,
                             classes=[0, 1, 2], key=k) as w:
                for s in ("train", "val"):
                    w.add(x[s], y[s], split=s)
    comm.Barrier()

    def cfg(shards, run, **extra):
        d = {"run": {"name": "s", "dir": os.path.join(root, run), "epochs": 2, "seed": 1},
             "data": {"dir": os.path.join(root, shards), "batch_size": 8, "prefetch": 1},
             "model": {"kind": "mlp", "hidden": [16]}, "optimizer": {"name": "sgd", "lr": 0.05},
             "checkpoint": {"every_steps": 4, "keep": 20},
             "logging": {"plots": False, "progress": False}, "comm": {"backend": "mpi"}}
        for k, v in extra.items():
            d[k] = {**d.get(k, {}), **v}
        return load_config(d)

    try:
        full = train(cfg("plain", "full"))
        calls = {"n": 0}

        def stop():
            calls["n"] += 1
            return comm.rank == 1 and calls["n"] == 7

        keyring.clear()  # each rank loads data.key / checkpoint.encrypt itself
        c = cfg("enc", "cut", data={"key": kp}, checkpoint={"encrypt": kp})
        assert train(c, stop_requested=stop).status == "interrupted"
        keyring.clear()
        second = train(c)
        assert second.status == "completed" and second.step == full.step
        a = load(os.path.join(root, "full", "checkpoints", "final.pt"))
        b = load(os.path.join(root, "cut", "checkpoints", "final.pt"))
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k
    finally:
        keyring.clear()
        comm.Barrier()
        if comm.rank == 0:
            shutil.rmtree(root, ignore_errors=True)
