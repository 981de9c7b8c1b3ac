"""Issue 19 on 2 ranks (run under 'mpirun -np 2 python -m pytest --with-mpi -m mpi'): a model from
an import path in the trainer, and the session API: 2 ranks = 1 rank on the same global batch,
a preemption seen by one rank stops both, and the resume is exact."""

from __future__ import annotations

import copy
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "byo"


@pytest.fixture(scope="module")
def world():
    import torch
    from mpi4py import MPI

    torch.set_num_threads(1)
    sys.path.insert(0, str(EXAMPLE))
    comm = MPI.COMM_WORLD
    root = comm.bcast(tempfile.mkdtemp(prefix="hpct-byo-mpi-") if comm.rank == 0 else None)
    data = Path(root) / "blobs"
    if comm.rank == 0:
        from slurm_helpers import make_blobs

        make_blobs(data, train=256, val=50, rows_per_shard=40)
    comm.Barrier()
    yield comm, Path(root), data
    sys.path.remove(str(EXAMPLE))


@pytest.mark.parametrize("backend", ["mpi", "horovod"])  # clipping synchronises each exchange its own way
def test_model_from_import_path_on_two_ranks_resumes_exactly(world, backend):
    import torch

    from hpctrain.train.checkpoint import load
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    comm, root, data = world

    def cfg(name):
        return load_config({"run": {"name": "m", "dir": str(root / backend / name), "epochs": 2, "seed": 1},
                            "data": {"dir": str(data), "batch_size": 8, "prefetch": 1},
                            "model": {"module": "byo_example.model:build", "args": {"width": 16, "blocks": 1,
                                                                                    "dropout": 0.2}},
                            "optimizer": {"name": "adamw", "lr": 0.01, "clip_grad_norm": 1.0},
                            "checkpoint": {"every_steps": 4, "keep": 20},
                            "logging": {"plots": False, "progress": False, "every_steps": 3},
                            "comm": {"backend": backend}})

    full = train(cfg("full"))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return comm.rank == 1 and calls["n"] == 7

    first = train(cfg("cut"), stop_requested=stop)
    assert comm.allgather((first.status, first.step)) == [("interrupted", 6)] * 2
    second = train(cfg("cut"))
    assert second.status == "completed" and second.step == full.step
    a = load(root / backend / "full" / "checkpoints" / "final.pt")["model"]
    b = load(root / backend / "cut" / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.metrics["val_accuracy"] > 0.9


def test_session_two_ranks_equal_one_rank_on_the_same_global_batch(world):
    """Each rank takes its half of a fixed global batch; after every step the weights equal a
    one-process reference that took the whole batch (averaging is exact up to rounding)."""
    import torch

    import hpctrain
    from byo_example.model import build

    comm, root, _ = world
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(5)]
    with hpctrain.session(root / "same-batch", checkpoint_every=0) as s:
        model = build(sample_shape=(6,), num_outputs=3, width=16, blocks=2)
        ref = copy.deepcopy(model)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        model, opt = s.setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        half = slice(16 * s.rank, 16 * (s.rank + 1))
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[half]), y[half]).backward()
            opt.step()
            ref_opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x), y).backward()
            ref_opt.step()
            for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), k


def session_loop(data, run_dir, comm, usr2_rank=None, usr2_at=None):
    import torch

    import hpctrain
    from byo_example.model import build

    with hpctrain.session(run_dir, seed=2, checkpoint_every=5, keep=50) as s:
        loader = s.loader(data, batch_size=8, prefetch=1)
        model = build(sample_shape=(6,), num_outputs=3, width=16, blocks=1, dropout=0.3)
        model, opt = s.setup(model, torch.optim.AdamW(model.parameters(), lr=0.01))
        state = s.resume({"model": model, "opt": opt})
        for step, (x, y) in s.steps(loader, start=state.step, epochs=2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            s.checkpoint_if_due(step)
            if s.rank == usr2_rank and step == usr2_at:
                os.kill(os.getpid(), signal.SIGUSR2)
    return s, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_session_preemption_on_one_rank_stops_both_and_resumes_exactly(world):
    import torch

    import hpctrain

    comm, root, data = world
    s_full, full = session_loop(data, root / "s-full", comm)
    with pytest.raises(hpctrain.Preempted) as e:
        session_loop(data, root / "s-cut", comm, usr2_rank=1, usr2_at=7)
    assert comm.allgather(e.value.step) == [7, 7]
    s_cut, cut = session_loop(data, root / "s-cut", comm)
    assert s_cut.step == s_full.step == 2 * (256 // 2 // 8)
    assert all(torch.equal(full[k], cut[k]) for k in full)
    # both ranks ended with the same weights (the exchange kept them equal)
    other = comm.bcast(cut if comm.rank == 0 else None)
    assert all(torch.equal(other[k], cut[k]) for k in cut)


def test_regression_metrics_on_two_ranks_equal_sklearn_on_the_whole_split(world):
    """val_r2/val_mse are sums over both ranks' shares; the oracle scores the final model's
    predictions of the whole validation split with scikit-learn."""
    import numpy as np
    from sklearn.metrics import mean_squared_error, r2_score

    from hpctrain.data.shards import iter_arrays
    from hpctrain.data.sources import write_shards
    from hpctrain.predict import load_run
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    comm, root, _ = world
    data = root / "diabetes"
    if comm.rank == 0:
        write_shards("sklearn:diabetes", data, val_fraction=0.25, task="regression", rows_per_shard=60)
    comm.Barrier()
    res = train(load_config({"run": {"name": "r", "dir": str(root / "reg"), "epochs": 5, "seed": 1},
                             "data": {"dir": str(data), "batch_size": 16, "prefetch": 0},
                             "model": {"kind": "mlp", "hidden": [16]}, "optimizer": {"lr": 0.02},
                             "metrics": {"extra": ["mae"]},
                             "logging": {"plots": False, "progress": False}, "comm": {"backend": "mpi"}}))
    if comm.rank == 0:
        x, y = (np.concatenate(a) for a in zip(*[(x, y) for _, x, y in iter_arrays(data, split="val")]))
        pred = load_run(root / "reg").predict(x)
        assert res.metrics["val_r2"] == pytest.approx(r2_score(y, pred), abs=1e-4)
        assert res.metrics["val_mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-4)
        assert res.metrics["val_mae"] == pytest.approx(float(np.abs(pred - y).mean()), rel=1e-4)
    assert comm.allgather(res.metrics["val_r2"])[0] == res.metrics["val_r2"]
