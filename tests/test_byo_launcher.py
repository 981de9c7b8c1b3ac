"""The example user project as users run it (docs/examples/byo): its script under mpirun,
preempted by USR2 and run again; a rank that raises ends every rank. Starts mpirun itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import mpirun, without_mpi_vars

pytestmark = pytest.mark.launcher

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "byo"


@pytest.fixture
def env(mpi_env):
    return dict(without_mpi_vars(mpi_env), PYTHONPATH=str(EXAMPLE))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from hpctrain.data.sources import write_shards

    d = tmp_path_factory.mktemp("digits") / "shards"
    write_shards("sklearn:digits?flat=1", d, shards=4, val_fraction=0.2)
    return d


def steps_logged(run_dir: Path) -> list[int]:
    m = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in m.read_text().splitlines()] if m.exists() else []


def test_example_script_on_two_ranks_stops_on_usr2_and_resumes(tmp_path, digits, env):
    from hpctrain.data.shards import Manifest

    total = 3 * (Manifest.load(digits).rows("train") // 2 // 8)  # 3 epochs, 2 ranks, batch 8 per rank
    run_dir = tmp_path / "run"
    cmd = mpirun(2, [sys.executable, str(EXAMPLE / "train.py"), "--data", str(digits), "--run-dir", str(run_dir),
                     "--epochs", "3", "--batch-size", "8", "--checkpoint-every", "1000"])
    p = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 120
    while len(steps_logged(run_dir)) < 2 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert p.poll() is None, p.stdout.read()
    os.killpg(p.pid, signal.SIGUSR2)  # mpirun forwards USR2 to the ranks, as srun/scancel would
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0 and "preempted; checkpoint of step" in out, out
    stopped = max(int(f.name[5:13]) for f in (run_dir / "checkpoints").glob("step-*.pt"))
    assert 0 < stopped < total and not (run_dir / "result.json").exists()
    p2 = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert f"resumed from {run_dir}/checkpoints/step-{stopped:08d}.pt" in p2.stderr
    assert json.loads((run_dir / "result.json").read_text())["step"] == total
    assert steps_logged(run_dir) == sorted(set(steps_logged(run_dir)))  # no step logged twice


def test_a_rank_that_raises_in_a_session_ends_all_ranks(tmp_path, digits, env):
    script = tmp_path / "boom.py"
    script.write_text(
        "import hpctrain, sys\n"
        "with hpctrain.session(sys.argv[1]) as s:\n"
        "    if s.rank == 1:\n"
        "        raise ValueError('rank one broke')\n"
        "    s.checkpoint(0)  # rank 0 waits in a collective for a peer that is gone\n"
        "    print('UNREACHABLE')\n")
    p = subprocess.run(mpirun(2, [sys.executable, str(script), str(tmp_path / "r")]), env=env,
                       capture_output=True, text=True, timeout=120)  # fail-fast: well under the timeout
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "[rank 1] ValueError: rank one broke" in out and "UNREACHABLE" not in out
