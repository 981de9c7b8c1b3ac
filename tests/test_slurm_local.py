"""`hpctrain submit --cluster local`: submitit's LocalExecutor with the same requeue logic,
no Slurm needed. The USR2 goes to the task process (as Slurm would send it); the task
checkpoints, exits 144, submitit's local controller restarts it and it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.counter import reference


def start(runs: Path, *args) -> subprocess.Popen:
    env = dict(os.environ, HPCTRAIN_RUNS=str(runs), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "hpctrain", "submit", "--cluster", "local", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise AssertionError(f"local run did not finish in {timeout} s:\n{out}") from None
    return p.returncode, out


def wait_held(run_dir: Path, timeout: float = 60) -> None:
    """Until the job waits at its --test-hold-at step for the signal (so it lands mid-run on any machine)."""
    marker = RunDir(run_dir).hold_marker
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if marker.is_file():
            return
        time.sleep(0.1)
    raise AssertionError(f"the job never reached its --test-hold-at step ({marker} is missing)")


def test_local_preemption_requeues_and_resumes(tmp_path):
    runs = tmp_path / "local runs"
    p = start(runs, "--counter", "60", "--counter-step-s", "0.05", "--name", "loc", "--test-hold-at", "10")
    run_dir = runs / "loc"
    wait_held(run_dir)
    pid = int(RunDir(run_dir).pid_file(0).read_text())
    os.kill(pid, signal.SIGUSR2)
    rc, out = finish(p)
    assert rc == 0, out
    ev = journal.read_events(run_dir)
    assert [e["kind"] for e in ev if e["event"] == "requeue"] == ["preemption"]
    assert [e["event"] for e in ev].count("started") == 2
    assert all(e["job_id"].startswith("local-") for e in ev if "job_id" in e)
    assert json.loads((run_dir / "result.json").read_text())["params"] == reference(60, 4)
    # the counter polls before each step, so its 10th poll comes after step 9's checkpoint
    assert "counter: resumed at step 9" in (run_dir / "logs" / "rank-0.log").read_text()


def test_local_crash_is_retried(tmp_path):
    runs = tmp_path / "runs"
    p = start(runs, "--counter", "30", "--counter-step-s", "0.01", "--counter-crash-at", "7", "--retries", "1",
              "--retry-backoff", "0", "--name", "crash")
    rc, out = finish(p)
    assert rc == 0, out
    st = journal.fold(journal.read_events(runs / "crash"))
    assert st.state == "COMPLETED" and st.retries == 1
    assert json.loads((runs / "crash" / "result.json").read_text())["params"] == reference(30, 4)


def test_local_permanent_error_is_not_retried(tmp_path):
    runs = tmp_path / "runs"
    rc, out = finish(start(runs, "--counter", "5", "--counter-fail", "--retries", "3", "--name", "bad"))
    assert rc == 1
    st = journal.fold(journal.read_events(runs / "bad"))
    assert st.state == "FAILED" and st.permanent and st.retries == 0
    assert "permanent_error is set" in st.reason
