"""Monitoring on 2 ranks (run under 'mpirun -np 2 python -m pytest --with-mpi -m mpi'): a rank that
sleeps in every step is named by the straggler alert. (comm.timeline is tested in test_monitor.py
under 'hpctrain launch': Horovod reads HOROVOD_TIMELINE once per process, and this pytest process
has started Horovod for other modules before.)"""

from __future__ import annotations

import json
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
    root = comm.bcast(tempfile.mkdtemp(prefix="hpct-monitor-mpi-") if comm.rank == 0 else None)
    data = Path(root) / "blobs"
    if comm.rank == 0:
        from slurm_helpers import make_blobs

        make_blobs(data, train=256, val=40, rows_per_shard=64)
    comm.Barrier()
    return comm, Path(root), data


def test_sleeping_rank_is_named_straggler(world):
    from hpctrain.env import rank_info
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    comm, root, data = world
    run_dir = root / "straggler"
    cfg = load_config({
        "run": {"name": "s", "dir": str(run_dir), "epochs": 1, "seed": 1},
        "data": {"dir": str(data), "batch_size": 8, "prefetch": 1},
        "model": {"module": "monitor_helpers:sleepy_mlp", "args": {"sleep_rank": 1, "sleep_s": 0.02}},
        "checkpoint": {"every_steps": 0, "every_epoch": False},
        "logging": {"plots": False, "progress": False},
        "comm": {"backend": "horovod"},
        "monitor": {"interval_s": 0.2, "gather_every_steps": 6},
    })
    res = train(cfg)
    assert res.status == "completed" and res.step == 16
    comm.Barrier()
    if comm.rank == 0:
        recs = [json.loads(x) for x in (run_dir / "monitor" / "rank-0.jsonl").read_text().splitlines()]
        strag = [r for r in recs if r["kind"] == "alert" and r["alert"] == "straggler"]
        assert strag, recs
        assert {r["rank"] for r in strag} == {1}  # the sleeping rank, never the one waiting for it
        node = comm.bcast(None, root=1)
        assert strag[0]["node"] == node and f"rank 1 on {node}" in strag[0]["message"]
        assert strag[0]["facts"]["ratio"] > 1.5
    else:
        comm.bcast(rank_info().node, root=1)
    # both ranks sampled into their own file
    assert (run_dir / "monitor" / f"rank-{comm.rank}.jsonl").is_file()
