"""scripts/gpu-check.sh, the one prepared call for a lent GPU, rehearsed here so that call is
not its first run: ``--simulate`` runs every step (gpu tests, CUDA benchmark, a short training
run (on the CPU), table) on the
numba CUDA simulator; without a device and without ``--simulate`` it must refuse with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "HPCTRAIN_GPU_TESTS_ON_SIM")}
    env.update(extra)
    return env


@pytest.mark.cudasim
def test_simulated_rehearsal_runs_every_step(tmp_path):
    # GPU_CHECK_STAGE=1: the same staging of hpctrain + kernels as on a bare device machine
    p = subprocess.run(["bash", str(SCRIPT), "--simulate", str(tmp_path)], capture_output=True, text=True,
                       timeout=400, env=_env(GPU_CHECK_STAGE="1"))
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "staged hpctrain" in out
    for step in ("== 1/4", "== 2/4", "== 3/4", "== 4/4"):
        assert step in out
    log = (tmp_path / "gpu-tests.log").read_text()
    assert " passed" in log and " failed" not in log
    gpu = json.loads((tmp_path / "bench-gpu.json").read_text())["gpu"]
    names = [k["kernel"] for k in gpu["kernels"]]
    assert {"impute transform (in place)", "impute transform (copy)", "augment noise",
            "reference: numba-random noise"} <= set(names)
    assert all(k["equal_to_cpu"] for k in gpu["kernels"] if "equal_to_cpu" in k)
    assert "simulator" in gpu["device"]
    assert "training: completed at step" in (tmp_path / "train.log").read_text()  # on the CPU in a rehearsal
    assert "tests rc=0, gpu bench rc=0, training rc=0" in out


def test_refuses_without_a_device(tmp_path):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        from numba import cuda

        if cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    p = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env=_env())
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no usable CUDA device" in p.stderr
