"""Issue 19 on the real local cluster: a user's script with the session API, submitted with
'hpctrain submit --script', preempted with USR2, resumes to the weights of an uninterrupted run;
a rank that raises ends the whole job (bounded waits; requeues released at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slurm_helpers import drive, events, job_of, make_blobs, wait_for

from hpctrain.cli import main as cli
from hpctrain.slurm import journal

pytestmark = pytest.mark.slurm

PARTITION = os.environ.get("HPCTRAIN_TEST_PARTITION", "debug")
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "byo"

SCRIPT = textwrap.dedent('''
    """A user's training script: the model comes from the user's package (byo_example, found
    through the PYTHONPATH recorded at submission), the loop is theirs."""
    import argparse

    import torch

    import hpctrain
    from byo_example.model import build

    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--raise-on-rank", type=int, default=None)
    p.add_argument("--backend", default="mpi")
    a = p.parse_args()
    with hpctrain.session(a.run_dir, backend=a.backend, seed=4, checkpoint_every=25) as s:
        loader = s.loader(a.data, batch_size=4, prefetch=1)
        model = build(sample_shape=(6,), num_outputs=3, width=16, blocks=1, dropout=0.2)
        model, opt = s.setup(model, torch.optim.AdamW(model.parameters(), lr=0.01), clip_grad_norm=1.0)
        state = s.resume({"model": model, "opt": opt})
        for step, (x, y) in s.steps(loader, start=state.step, epochs=3):
            if step == 5 and s.rank == a.raise_on_rank:
                raise RuntimeError("a bug on one rank")
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            s.log(step)
            s.checkpoint_if_due(step)
        s.checkpoint(s.step)
''')


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project directory (with a space in its name) holding the script; PYTHONPATH
    names the user's package, as a user would set it."""
    pytest.importorskip("torch")
    proj = tmp_path / "my project"
    proj.mkdir()
    (proj / "train.py").write_text(SCRIPT)
    data = make_blobs(proj / "blobs", train=240, val=20, rows_per_shard=40)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE))
    monkeypatch.setenv("HPCTRAIN_RUNS", str(proj / "runs"))
    yield proj, data
    ids = set()
    for ev_file in (proj / "runs").rglob("events.jsonl"):
        ids |= {e["job_id"] for e in journal.read_events(ev_file.parent.parent) if e.get("job_id")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=30)


def test_script_preempted_by_usr2_resumes_to_the_uninterrupted_weights(project):
    import torch

    from hpctrain.train.checkpoint import load

    proj, data = project
    from hpctrain.rundir import RunDir

    # --test-hold-at: the job waits at its 40th step boundary for the signal, on any machine speed
    assert cli(["submit", "--partition", PARTITION, "--time", "10", "--test-hold-at", "40", "--script", "train.py",
                "--", "--data", str(data)]) == 0
    run_dir = proj / "runs" / "train"
    wait_for(RunDir(run_dir).hold_marker.is_file, 120, "the script to reach step boundary 40")
    job = job_of(run_dir)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    assert drive(run_dir, 240) == "COMPLETED"
    assert [e["kind"] for e in events(run_dir, "requeue")] == ["preemption"]
    starts = events(run_dir, "started")
    # the default restart is a new job for the same run dir (no Slurm requeue hold)
    assert len(starts) == 2 and starts[0]["job_id"] == job != starts[1]["job_id"]
    # the oracle: the same script run here, in one process, without interruption
    ref = proj / "reference"
    p = subprocess.run([sys.executable, "train.py", "--data", str(data), "--run-dir", str(ref)], cwd=proj,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = load(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1])
    want = load(sorted((ref / "checkpoints").glob("step-*.pt"))[-1])
    assert got["step"] == want["step"] == 3 * 60
    for k, v in want["objects"]["model"].items():
        assert torch.equal(got["objects"]["model"][k], v), k


def test_a_rank_that_raises_ends_the_job(project):
    proj, data = project
    assert cli(["submit", "--partition", PARTITION, "--time", "10", "--ntasks-per-node", "2", "--name", "boom",
                "--script", "train.py", "--", "--data", str(data), "--raise-on-rank", "1", "--backend",
                "torch"]) == 0
    run_dir = proj / "runs" / "boom"
    job = job_of(run_dir)
    wait_for(lambda: events(run_dir, "failed"), 120, "the failure to be recorded")

    def gone():
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30)
        return q.returncode != 0 or not q.stdout.strip()

    wait_for(gone, 60, "the job to end after one rank raised")  # rank 0 must not wait in a collective
    failed = events(run_dir, "failed")
    assert any("a bug on one rank" in e["message"] and e["rank"] == 1 for e in failed)
    assert not (run_dir / "result.json").exists()
