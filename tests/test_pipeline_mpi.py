"""Pipeline parallelism on 2 ranks, in-process (run under 'mpirun -np 2 python -m pytest --with-mpi
-m mpi'): a 2-stage pipeline against the unsplit model, and exact resume of a pipeline run."""

from __future__ import annotations

import shutil
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
    root = comm.bcast(tempfile.mkdtemp(prefix="hpct-pipe-mpi-") if comm.rank == 0 else None)
    data = Path(root) / "blobs"
    if comm.rank == 0:
        from slurm_helpers import make_blobs

        make_blobs(data, train=192, val=40, rows_per_shard=48)
    comm.Barrier()
    yield comm, Path(root), data
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stages_give_the_unsplit_loss_and_gradients(world, schedule):
    import copy

    import torch

    from hpctrain.comm import shared_comm
    from hpctrain.env import rank_info
    from hpctrain.train.models import build_model
    from hpctrain.train.pipeline import Layout
    from hpctrain.train.pipeline_stage import PipelineRuntime

    comm, _, _ = world
    tcomm = shared_comm("torch", rank_info(), timeout_s=60)
    assert tcomm.size == 2
    torch.manual_seed(11)
    model = build_model("mlp", (6,), 3, hidden=[32, 16])
    ref = copy.deepcopy(model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    loss_fn = torch.nn.CrossEntropyLoss()
    want = loss_fn(ref(x), y)
    want.backward()
    rt = PipelineRuntime(model=model, layout=Layout(world_size=2, stages=2, rank=tcomm.rank),
                         device=torch.device("cpu"), microbatches=4, schedule=schedule, criterion=loss_fn)
    got = rt.train_batch(x, y)
    # the last stage has the loss; every parameter's gradient lives on the stage that holds it
    losses = comm.allgather(got)
    assert losses[0] == 0.0 and abs(losses[1] - float(want)) < 1e-5, (losses, float(want))
    mine = {rt.to_full[n]: p.grad.clone() for n, p in rt.module.named_parameters()}
    seen = comm.allgather(sorted(mine))
    assert sorted(seen[0] + seen[1]) == sorted(n for n, _ in ref.named_parameters())  # each once
    assert seen[0] and seen[1]
    refg = dict(ref.named_parameters())
    for name, g in mine.items():
        err = float((g - refg[name].grad).abs().max())
        assert err < 1e-5, (name, err)


def _cfg(data, run_dir, **extra):
    from hpctrain.train.config import load_config

    d = {"run": {"name": "pp", "dir": str(run_dir), "epochs": 2, "seed": 4},
         "data": {"dir": str(data), "batch_size": 8, "prefetch": 1},
         "model": {"kind": "mlp", "hidden": [16, 8], "dropout": 0.1},
         "optimizer": {"name": "adamw", "lr": 0.01, "clip_grad_norm": 0.5},
         # early stopping keeps each stage's best weights: in the checkpoint, restored at the end
         "regularization": {"early_stopping": True, "patience": 5},
         "checkpoint": {"every_steps": 5, "keep": 20},
         "logging": {"plots": False, "progress": False, "every_steps": 3},
         "comm": {"backend": "torch", "timeout_s": 60},
         "parallel": {"pipeline_stages": 2, "microbatches": 2, "schedule": "1f1b"}}
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v}
    return load_config(d)


def test_pipeline_resume_equals_an_uninterrupted_run(world):
    import torch

    from hpctrain.errors import ConfigError
    from hpctrain.train.checkpoint import load
    from hpctrain.train.models import build_model
    from hpctrain.train.trainer import train

    comm, root, data = world
    full = train(_cfg(data, root / "full"))
    assert full.status == "completed" and full.metrics["val_accuracy"] > 0.8
    calls = {"n": 0}

    def stop():  # only rank 1 (the last stage) asks; both stop at the same step boundary
        calls["n"] += 1
        return comm.rank == 1 and calls["n"] == 8

    cfg = _cfg(data, root / "cut")
    first = train(cfg, stop_requested=stop)
    assert first.status == "interrupted" and comm.allgather(first.step) == [7, 7]
    # another number of stages cannot take over this checkpoint's per-stage optimizer state
    with pytest.raises(ConfigError, match="written by a pipeline of 2 stages.*pipeline_stages=2"):
        train(_cfg(data, root / "cut", parallel={"pipeline_stages": 1}))
    second = train(cfg)
    assert second.status == "completed" and second.step == full.step and second.resumed_from
    a, b = load(root / "full" / "checkpoints" / "final.pt"), load(root / "cut" / "checkpoints" / "final.pt")
    # one checkpoint of the whole model, under the unsplit model's names
    assert list(a["model"]) == list(build_model("mlp", (6,), 3, hidden=[16, 8], dropout=0.1).state_dict())
    # blocks of 112, 136 and 27 parameters: [112 | 136 + 27] is the balanced cut
    assert a["pipeline"] == {"stages": 2, "boundaries": [0, 1, 3], "microbatches": 2, "schedule": "1f1b"}
    assert len(a["optimizer"]["pipeline_stages"]) == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s in range(2):
        sa, sb = a["optimizer"]["pipeline_stages"][s]["state"], b["optimizer"]["pipeline_stages"][s]["state"]
        for i in sa:
            assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]), (s, i)
    assert full.metrics["val_macro_f1"] == second.metrics["val_macro_f1"]
    assert full.metrics["restored_best"] and sorted(a["early"]["best_state"]) == sorted(a["model"])
