"""The stack's basic promise: a 2-rank Horovod allreduce over MPI returns the right sum."""

import json
import subprocess
import sys

import pytest


@pytest.mark.mpi
def test_horovod_allreduce_two_ranks():
    import horovod.torch as hvd
    import torch
    from mpi4py import MPI

    hvd.init()
    assert hvd.size() == MPI.COMM_WORLD.Get_size() == 2
    assert hvd.mpi_enabled()
    x = torch.arange(1000, dtype=torch.float32) * (hvd.rank() + 1)
    out = hvd.allreduce(x, op=hvd.Sum, name="test.sum")
    torch.testing.assert_close(out, torch.arange(1000, dtype=torch.float32) * 3, rtol=0, atol=0)
    avg = hvd.allreduce(torch.tensor([float(hvd.rank())]), name="test.avg")  # default op: average
    assert avg.item() == 0.5


@pytest.mark.launcher
def test_selftest_through_hpctrain_launch():
    p = subprocess.run([sys.executable, "-m", "hpctrain", "launch", "-n", "2", "--", sys.executable, "-m",
                        "hpctrain.selftest", "allreduce", "--elements", "4096"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][0])
    assert res["ok"] and res["world_size"] == 2 and res["expected"] == 3.0 and res["got_min"] == res["got_max"] == 3.0
