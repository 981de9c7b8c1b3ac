"""Shared test fixtures and the marker rules.

- ``cudasim`` tests need NUMBA_ENABLE_CUDASIM=1 set before numba is imported, so they are
  skipped unless this pytest process was started with it (scripts/test.sh does).
- ``slurm`` tests are skipped with a reason when no controller answers; ``multinode`` tests
  when the several-node cluster (``multinode_conf()``) does not answer with 2 nodes or more.
- ``gpu`` tests are skipped without a CUDA device, except that HPCTRAIN_GPU_TESTS_ON_SIM=1
  (with NUMBA_ENABLE_CUDASIM=1) runs them on the simulator: the rehearsal of
  scripts/gpu-check.sh (``--simulate``), so that script's one device call is not its first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def multinode_conf() -> Path:
    """The config of the several-node local cluster (scripts/local-cluster.sh start --nodes 2)."""
    return Path(os.environ.get("HPCTRAIN_MULTINODE_SLURM_CONF") or REPO / ".cluster-2node" / "slurm.conf")


def _slurm_up(conf: Path | None = None, min_nodes: int = 1) -> str | None:
    if not shutil.which("scontrol"):
        return "scontrol not on PATH"
    env = dict(os.environ, SLURM_CONF=str(conf)) if conf else None
    start = "scripts/local-cluster.sh start" + (f" --nodes {min_nodes}" if conf else "")
    if conf and not conf.is_file():
        return f"{conf} does not exist; run {start}"
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10, env=env)
        if p.returncode != 0 or "UP" not in p.stdout:
            return f"no Slurm controller answers; run {start}"
        n = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=10, env=env)
    except subprocess.TimeoutExpired:
        return "scontrol ping / sinfo timed out"
    if len(set(n.stdout.split())) < min_nodes:
        return f"the cluster has {len(set(n.stdout.split()))} node(s), these tests need {min_nodes}; run {start}"
    return None


def _cuda_device() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return os.environ.get("HPCTRAIN_GPU_TESTS_ON_SIM") == "1"
    try:
        from numba import cuda

        return cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    slurm_reason = None
    slurm_checked = False
    multi_reason = None
    gpu = None
    for item in items:
        if "cudasim" in item.keywords and not sim:
            item.add_marker(pytest.mark.skip(reason="needs NUMBA_ENABLE_CUDASIM=1 set before numba import "
                                                    "(scripts/test.sh runs these in their own process)"))
        if "slurm" in item.keywords:
            if not slurm_checked:
                slurm_reason, slurm_checked = _slurm_up(), True
            if slurm_reason:
                item.add_marker(pytest.mark.skip(reason=slurm_reason))
        if "multinode" in item.keywords:
            if multi_reason is None:
                multi_reason = _slurm_up(multinode_conf(), 2) or ""
            if multi_reason:
                item.add_marker(pytest.mark.skip(reason=multi_reason))
        if "gpu" in item.keywords:
            if gpu is None:
                gpu = _cuda_device()
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="no CUDA device"))


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def mpi_env() -> dict:
    """Environment for tests that start mpirun (or srun) themselves, without the MPI wiring
    variables an MPI singleton earlier in this pytest process left behind."""
    from hpctrain.launch import without_mpi_wiring

    env = without_mpi_wiring(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", PYTHONUNBUFFERED="1")
    return env
