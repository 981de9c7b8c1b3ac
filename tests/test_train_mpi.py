"""The trainer on 2 ranks in-process (run under 'mpirun -np 2 python -m pytest --with-mpi -m mpi')."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def world():
    import torch
    from mpi4py import MPI

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    root = comm.bcast(tempfile.mkdtemp(prefix="hpct-train-mpi-") if comm.rank == 0 else None)
    data = Path(root) / "blobs"
    if comm.rank == 0:
        from slurm_helpers import make_blobs

        make_blobs(data, train=256, val=50, rows_per_shard=40)
    comm.Barrier()
    return comm, Path(root), data


def cfg_for(data, run_dir, backend, **extra):
    from hpctrain.train.config import load_config

    d = {"run": {"name": "m", "dir": str(run_dir), "epochs": 2, "seed": 1},
         "data": {"dir": str(data), "batch_size": 8, "prefetch": 1},
         "model": {"kind": "mlp", "hidden": [16], "dropout": 0.2},
         "optimizer": {"name": "sgd", "lr": 0.05},
         "checkpoint": {"every_steps": 4, "keep": 20},
         "logging": {"plots": False, "progress": False, "every_steps": 3},
         "comm": {"backend": backend}}
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v}
    return load_config(d)


@pytest.mark.parametrize("backend", ["horovod", "mpi", "torch"])
def test_stop_is_agreed_and_resume_is_exact_on_two_ranks(world, backend):
    import torch

    from hpctrain.train.checkpoint import load
    from hpctrain.train.trainer import train

    comm, root, data = world
    full = train(cfg_for(data, root / f"full-{backend}", backend))
    calls = {"n": 0}

    def stop():  # only rank 1 asks; both must stop at the same step boundary
        calls["n"] += 1
        return comm.rank == 1 and calls["n"] == 7

    cfg = cfg_for(data, root / f"cut-{backend}", backend)
    first = train(cfg, stop_requested=stop)
    assert first.status == "interrupted" and first.step == 6
    assert comm.allgather(first.step) == [6, 6]
    second = train(cfg)
    assert second.status == "completed" and second.step == full.step
    a = load(root / f"full-{backend}" / "checkpoints" / "final.pt")
    b = load(root / f"cut-{backend}" / "checkpoints" / "final.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(b["rng"]) == 2 and not torch.equal(b["rng"][0]["torch"], b["rng"][1]["torch"])
    assert full.metrics["val_macro_f1"] == second.metrics["val_macro_f1"] > 0.8
