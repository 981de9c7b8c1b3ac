"""Distributed profiling and drift: 2 MPI ranks give exactly the 1-rank result."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest


def _write(path, seed=0, shift=0.0, n=1700):
    from hpctrain.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 0] += shift
    x[rng.random(x.shape) < 0.05] = np.nan
    x[n - 20:] = x[:20]
    y = (rng.random(n) < 0.2).astype(np.int64)
    y[n - 20:] = y[:20]
    # 5 shards of unequal size: rank 0 reads 3, rank 1 reads 2
    with ShardWriter(path, feature_names=["a", "b", "c", "d"], sample_shape=(4,), rows_per_shard=400) as w:
        w.add(x, y)
    return path


@pytest.mark.mpi
def test_two_rank_profile_equals_one_rank():
    from mpi4py import MPI

    from hpctrain.quality.dist import LocalComm, MpiComm
    from hpctrain.quality.io import load_manifest, local_chunks
    from hpctrain.quality.profile import profile_chunks

    world = MPI.COMM_WORLD
    if world.Get_size() < 2:
        pytest.skip("needs 2 ranks")
    tmp = world.bcast(tempfile.mkdtemp(prefix="hpctrain-mpi-profile-") if world.Get_rank() == 0 else None)
    try:
        if world.Get_rank() == 0:
            _write(Path(tmp) / "s")
        world.Barrier()
        m = load_manifest(Path(tmp) / "s")
        comm = MpiComm(world)
        kw = dict(feature_names=list(m.schema.feature_names), total_rows=m.rows(), declared_classes=[0, 1])
        two = profile_chunks(local_chunks(m, None, comm.rank, comm.size), comm=comm, **kw)
        one = profile_chunks(local_chunks(m, None), comm=LocalComm(), **kw)
        assert two == one
        assert two["duplicates"]["rows"] == 20 and two["rows"] == 1700
        everyone = world.allgather(two)
        assert everyone[0] == everyone[1]
    finally:
        world.Barrier()
        if world.Get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)


def _mpirun(args, env, n=2):
    mpirun = shutil.which("mpirun")
    exe = [sys.executable, "-m", "hpctrain"]
    cmd = [mpirun, "-np", str(n), "--oversubscribe", "--bind-to", "none", *exe, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.launcher
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not on PATH")
def test_cli_under_mpirun_equals_single_process(tmp_path, mpi_env):
    from hpctrain.cli import main

    src = _write(tmp_path / "s")
    shifted = _write(tmp_path / "t", seed=1, shift=0.7)
    p = _mpirun(["profile", str(src), "--out", str(tmp_path / "r2")], mpi_env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.count("report:") == 1  # only rank 0 prints and writes
    assert main(["profile", str(src), "--out", str(tmp_path / "r1")]) == 0
    r1 = json.loads((tmp_path / "r1" / "report.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r2.pop("source")["ranks"] == 2 and r1.pop("source")["ranks"] == 1
    assert r1 == r2

    p = _mpirun(["drift", str(src), str(shifted), "--out", str(tmp_path / "d2")], mpi_env)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-3000:]
    assert main(["drift", str(src), str(shifted), "--out", str(tmp_path / "d1")]) == 3
    d1 = json.loads((tmp_path / "d1" / "drift.json").read_text())
    d2 = json.loads((tmp_path / "d2" / "drift.json").read_text())
    assert d1 == d2 and d1["drifted_features"] == ["a"]

    # bad input on every rank: one clear line, exit 2, no hang
    p = _mpirun(["profile", str(tmp_path / "missing"), "--out", str(tmp_path / "r3")], mpi_env)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    assert "does not exist" in p.stderr

    # a corrupt shard that only rank 1 reads: that rank aborts the job with exit 2, nobody hangs
    shard = src / sorted(f.name for f in src.glob("train-*.h5"))[1]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    p = _mpirun(["profile", str(src), "--verify", "--out", str(tmp_path / "r4")], mpi_env)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    assert "rank 1: error:" in p.stderr and "sha256" in p.stderr


def test_world_comm_is_local_without_a_launcher(monkeypatch):
    from hpctrain.quality.dist import LocalComm, world_comm

    for k in list(os.environ):
        if k.startswith(("OMPI_COMM_WORLD", "PMI_", "PMIX_", "SLURM_")):
            monkeypatch.delenv(k)
    assert isinstance(world_comm(), LocalComm)
