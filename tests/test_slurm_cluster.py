"""`hpctrain submit`/`sweep`/`status` against the real local slurmctld (scripts/local-cluster.sh
start). No test uses sacct (the cluster has no accounting). Each wait is bounded; requeued
jobs are released with `scontrol update JobId=J StartTime=now` (else Slurm holds them ~121 s);
every job a test submitted is scancelled afterwards.

The run dirs live under a path with spaces and a quote, so the quoting of the generated
sbatch script is exercised by the real sbatch/srun too.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import drive, events, job_of, make_blobs, release_if_requeued, wait_for, write_cfg

from hpctrain.cli import main as cli
from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.counter import reference
from hpctrain.slurm.environment import show_job
from hpctrain.slurm.status import run_status

pytestmark = pytest.mark.slurm

PARTITION = os.environ.get("HPCTRAIN_TEST_PARTITION", "debug")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    base = tmp_path / "runs dir 'q'"
    base.mkdir()
    monkeypatch.setenv("HPCTRAIN_RUNS", str(base))
    yield base
    ids = set()
    for ev_file in base.rglob("events.jsonl"):
        ids |= {e["job_id"] for e in journal.read_events(ev_file.parent.parent) if e.get("job_id")}
    for path in base.rglob("sweep.json"):
        ids |= set(json.loads(path.read_text()).get("job_ids", []))
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=30)


def submit(*args) -> int:
    return cli(["submit", "--partition", PARTITION, *args])


def held(run_dir: Path) -> bool:
    """The job waits at its --test-hold-at step for the signal: one sent now lands mid-run on any machine."""
    return RunDir(run_dir).hold_marker.is_file()


def submit_counter(base: Path, name: str, steps: int, step_s: float, *args: str) -> tuple[Path, str]:
    """Submit the built-in counter as run ``name`` under ``base``; (its run dir, its job id)."""
    assert submit("--counter", str(steps), "--counter-step-s", str(step_s), "--name", name, *args) == 0
    run_dir = base / name
    return run_dir, job_of(run_dir)


# ------------------------------------------------------------------ the real trainer

@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    pytest.importorskip("torch")
    return make_blobs(tmp_path_factory.mktemp("slurm data") / "blobs")


def test_submit_trains_and_reads_back(runs, blobs, capsys, monkeypatch):
    pytest.importorskip("hpctrain.train.trainer")
    monkeypatch.chdir(runs.parent)  # run.dir defaults to runs/<name>, relative to here
    cfg = write_cfg(runs.parent / "c.yaml", blobs, "short")
    assert submit(str(cfg), "--time", "10", "--name", "short one") == 0
    run_dir = runs.parent / "runs" / "short one"
    assert drive(run_dir, 120) == "COMPLETED"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["step"] == 2 * 30 and res["metrics"]["val_accuracy"] > 0.9
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("kind") == "epoch" for x in lines)
    capsys.readouterr()
    assert cli(["status", str(run_dir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["state"] == "COMPLETED" and st["last_step"] == 60 and st["requeues"] == 0
    assert cli(["logs", str(run_dir), "--rank", "0"]) == 0
    assert "Job completed successfully" in capsys.readouterr().out


# ids: pytest-mpi skips any test whose keywords hold "mpi" unless run under --with-mpi
@pytest.mark.parametrize("backend", ["horovod", "mpi"], ids=["horovod", "mpi4py"])
def test_one_rank_mpi_backends_complete_under_srun(runs, blobs, monkeypatch, backend):
    # issue 18: one rank calls MPI_Init too; under srun's site default (--mpi=none) Open MPI
    # aborts ("OMPI was not built with SLURM's PMI support"), so submit must pick PMIx here as well
    pytest.importorskip("hpctrain.train.trainer")
    pytest.importorskip("horovod.torch" if backend == "horovod" else "mpi4py")
    monkeypatch.chdir(runs.parent)
    cfg = write_cfg(runs.parent / f"{backend}.yaml", blobs, f"one-{backend}", comm={"backend": backend})
    assert submit(str(cfg), "--time", "10") == 0
    run_dir = runs.parent / "runs" / f"one-{backend}"
    assert json.loads(RunDir(run_dir).spec.read_text())["spec"]["mpi"] == "pmix"
    assert drive(run_dir, 150) == "COMPLETED"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["step"] == 2 * 30
    assert [e["ntasks"] for e in events(run_dir, "started")] == [1]


def test_preemption_resumes_to_the_uninterrupted_parameters(runs, blobs, monkeypatch):
    pytest.importorskip("hpctrain.train.trainer")
    import torch

    from hpctrain.train.checkpoint import load
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    monkeypatch.chdir(runs.parent)
    kw = dict(run={"epochs": 8}, data={"batch_size": 4}, checkpoint={"every_steps": 100})
    cfg = write_cfg(runs.parent / "p.yaml", blobs, "pre", **kw)
    assert submit(str(cfg), "--time", "10", "--test-hold-at", "8") == 0
    run_dir = runs.parent / "runs" / "pre"
    job = job_of(run_dir)
    wait_for(lambda: held(run_dir), 90, "training to wait at step boundary 8 of 960")
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    assert drive(run_dir, 180) == "COMPLETED"
    req = events(run_dir, "requeue")
    assert [e["kind"] for e in req] == ["preemption"]
    assert req[0]["seconds_left"] > 300  # Slurm's EndTime said: far from the limit
    starts = events(run_dir, "started")
    # the default restart is a new job for the same run dir (no Slurm requeue hold)
    assert len(starts) == 2 and starts[0]["job_id"] == job != starts[1]["job_id"]

    # the oracle: the same config, trained in this process without interruption
    ref_cfg = load_config(str(cfg), ["run.dir=" + str(runs.parent / "reference")])
    assert train(ref_cfg).status == "completed"
    got = load(run_dir / "checkpoints" / "final.pt")
    want = load(runs.parent / "reference" / "checkpoints" / "final.pt")
    assert got["step"] == want["step"] == 960
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k


def test_bad_config_fails_once_and_status_says_why(runs, blobs, capsys, monkeypatch):
    pytest.importorskip("hpctrain.train.trainer")
    monkeypatch.chdir(runs.parent)
    # valid at submission; the data dir is gone when the job starts
    cfg = write_cfg(runs.parent / "b.yaml", runs.parent / "no such data", "bad")
    assert submit(str(cfg), "--time", "10", "--retries", "2", "--retry-backoff", "1") == 0
    run_dir = runs.parent / "runs" / "bad"
    assert drive(run_dir, 90) == "FAILED"
    wait_for(lambda: events(run_dir, "gave_up"), 30, "the after-step's verdict")
    st = journal.fold(journal.read_events(run_dir))
    assert st.permanent and st.retries == 0 and len(st.job_ids) == 1
    assert not events(run_dir, "retry")
    capsys.readouterr()
    assert cli(["status", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "not retried (permanent error)" in out and "no such data" in out
    assert "rank-0.log" in out  # the tail of the failing rank's log


def test_grid_sweep_runs_as_one_array_and_reports_the_best(runs, blobs, capsys, monkeypatch):
    pytest.importorskip("hpctrain.train.trainer")
    monkeypatch.chdir(runs.parent)
    cfg = write_cfg(runs.parent / "g.yaml", blobs, "grid", run={"epochs": 1})
    # --parallel 2: two array tasks at once on the one node, each with its own rendezvous port
    rc = cli(["sweep", str(cfg), "--grid", "optimizer.lr=1e-4,3e-3,1e-2,3e-2", "--parallel", "2",
              "--metric", "val_loss", "--partition", PARTITION, "--time", "10", "--wait-timeout", "240"])
    out = capsys.readouterr().out
    assert rc == 0, out
    sweep = runs.parent / "runs" / "grid-sweep"
    meta = json.loads((sweep / "sweep.json").read_text())
    assert len(meta["job_ids"]) == 1  # one array
    script = next((sweep / "slurm" / "submitit").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%2" in script
    import csv

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4
    losses = {float(r["optimizer.lr"]): float(r["val_loss"]) for r in rows}
    for i, lr in enumerate([1e-4, 3e-3, 1e-2, 3e-2]):  # the table is what each trial wrote
        res = json.loads((sweep / "trials" / f"trial-{i}" / "result.json").read_text())
        assert res["metrics"]["val_loss"] == pytest.approx(losses[lr])
    best_lr = min(losses, key=losses.get)
    best_i = [1e-4, 3e-3, 1e-2, 3e-2].index(best_lr)
    assert f"best: trial {best_i} val_loss=" in out


# ------------------------------------------------------------------ the stand-in counter

def test_counter_grid_in_parallel_records_failed_trials(runs, capsys):
    rc = cli(["sweep", "--counter", "20", "--counter-step-s", "0.02", "--grid", "scale=3,1",
              "--grid", "permanent_error=false,true", "--parallel", "2", "--partition", PARTITION, "--time", "5",
              "--wait-timeout", "180"])
    out = capsys.readouterr().out
    assert rc == 0, out
    sweep = runs / "counter-sweep"
    import csv

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [(r["scale"], r["permanent_error"], r["state"]) for r in rows] == [
        ("3", "False", "COMPLETED"), ("3", "True", "FAILED"), ("1", "False", "COMPLETED"), ("1", "True", "FAILED")]
    want = reference(20, 4)
    loss = 0.5 * sum((x - i) ** 2 for i, x in enumerate(want))
    assert float(rows[2]["loss"]) == pytest.approx(loss) and float(rows[0]["loss"]) == pytest.approx(3 * loss)
    assert "best: trial 2 loss=" in out and "2 completed, 2 failed" in out
    assert "#SBATCH --array=0-3%2" in next((sweep / "slurm" / "submitit").glob("*_submission.sh")).read_text()
    assert cli(["status", str(sweep)]) == 0
    assert "best: trial 2 loss=" in capsys.readouterr().out


def test_time_limit_requeues_and_finishes(runs):
    # 45 s of work, a 1-minute limit, the signal 50 s before it: Slurm signals at 10-40 s
    # (its limit check runs every ~30 s), the job requeues itself at least once as a timeout
    run_dir, _ = submit_counter(runs, "limit", 450, 0.1, "--time", "1", "--signal-delay", "50")
    assert drive(run_dir, 240) == "COMPLETED"
    kinds = [e["kind"] for e in events(run_dir, "requeue")]
    assert kinds and set(kinds) == {"timeout"}
    assert all(e["seconds_left"] <= 50 + 30 for e in events(run_dir, "requeue"))
    res = json.loads((run_dir / "result.json").read_text())
    assert res["params"] == reference(450, 4)


def test_counter_preemption_by_usr2_is_not_counted_as_a_timeout(runs):
    # submitit would call this a timeout (the job is shorter than 10 minutes); Slurm's EndTime says otherwise
    run_dir, job = submit_counter(runs, "usr2", 60, 0.1, "--time", "5", "--max-timeouts", "0", "--test-hold-at", "5")
    wait_for(lambda: held(run_dir), 60, "the counter to wait at step boundary 5")
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    assert drive(run_dir, 120) == "COMPLETED"
    assert [e["kind"] for e in events(run_dir, "requeue")] == ["preemption"]
    assert json.loads((run_dir / "result.json").read_text())["params"] == reference(60, 4)


def test_killed_processes_are_retried_and_finish(runs):
    run_dir, _ = submit_counter(runs, "crash", 80, 0.05, "--time", "5", "--retries", "1", "--retry-backoff", "1")
    pid_file = run_dir / "slurm" / "pids" / "rank-0.pid"

    def midway():
        ck = run_dir / "checkpoints" / "counter.json"
        return pid_file.is_file() and ck.is_file() and json.loads(ck.read_text())["step"] >= 10
    wait_for(midway, 60, "the counter to pass step 10")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # stands in for a lost node
    assert drive(run_dir, 120) == "COMPLETED"
    st = journal.fold(journal.read_events(run_dir))
    assert st.retries == 1 and len(st.job_ids) == 2
    assert "137" in events(run_dir, "failed")[0]["message"]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["params"] == reference(80, 4)


def test_scontrol_requeue_of_a_running_job_is_not_swallowed_nor_doubled(runs):
    # `scontrol requeue` sends SIGTERM: the job must stop at the next step (not run on to the end,
    # as with submitit's SIGTERM bypass), leave the requeue to Slurm (no second, self-made one) and resume
    run_dir, job = submit_counter(runs, "term", 80, 0.1, "--time", "5")
    wait_for(lambda: (run_dir / "checkpoints" / "counter.json").is_file(), 60, "the first checkpoint")
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30, capture_output=True)
    assert drive(run_dir, 120) == "COMPLETED"
    stopped = events(run_dir, "stopped")
    assert len(stopped) == 1 and stopped[0]["kind"] == "terminated"
    assert not events(run_dir, "requeue")  # Slurm requeued it; hpctrain did not add one
    assert [e["restart_count"] for e in events(run_dir, "started")] == [0, 1]
    log = (run_dir / "logs" / "rank-0.log").read_text()
    first = int(log.split("stop requested at step ")[1].split(";")[0])
    assert first < 80 and f"resumed at step {first}" in log
    assert json.loads((run_dir / "result.json").read_text())["params"] == reference(80, 4)


def test_finished_run_exits_at_once_when_requeued(runs):
    run_dir, job = submit_counter(runs, "done", 10, 0.02, "--time", "5")
    assert drive(run_dir, 60) == "COMPLETED"
    assert job_of(run_dir) == job
    result = (run_dir / "result.json").read_bytes()
    mtime = (run_dir / "result.json").stat().st_mtime_ns
    metrics = (run_dir / "metrics.jsonl").read_text()
    wait_for(lambda: (show_job(job) or {}).get("JobState") == "COMPLETED", 30, "slurmctld to see it completed")
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30, capture_output=True)

    def reran():
        release_if_requeued(job)
        return events(run_dir, "already_completed")
    wait_for(reran, 90, "the requeued job to start again")
    wait_for(lambda: (show_job(job) or {}).get("JobState") == "COMPLETED", 60, "the requeued job to end")
    assert (run_dir / "result.json").read_bytes() == result
    assert (run_dir / "result.json").stat().st_mtime_ns == mtime
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert events(run_dir, "already_completed")[0]["restart_count"] == 1
    assert run_status(run_dir).state == "COMPLETED"


def test_bayes_sweep_drives_optuna_waves(runs, capsys):
    optuna = pytest.importorskip("optuna")
    from hpctrain.slurm.sweep import journal_storage

    rc = cli(["sweep", "--counter", "10", "--counter-step-s", "0.01", "--bayes", "scale=uniform(1,3)",
              "--trials", "3", "--parallel", "2", "--name", "bo", "--partition", PARTITION, "--time", "5",
              "--wait-timeout", "180"])
    out = capsys.readouterr().out
    assert rc == 0, out
    sweep = runs / "bo"
    meta = json.loads((sweep / "sweep.json").read_text())
    assert len(meta["job_ids"]) == 2 and [t["index"] for t in meta["trials"]] == [0, 1, 2]  # waves of 2 and 1
    study = optuna.load_study(study_name="bo", storage=journal_storage(sweep))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    for t in meta["trials"]:  # what Optuna was told is what each trial wrote
        res = json.loads((sweep / "trials" / f"trial-{t['index']}" / "result.json").read_text())
        assert study.trials[t["number"]].value == pytest.approx(res["metrics"]["loss"])
    assert f"loss={study.best_value:.6g}" in out


def test_cancelled_bayes_sweep_submits_no_further_waves(runs):
    pytest.importorskip("optuna")
    import sys

    p = subprocess.Popen([sys.executable, "-m", "hpctrain", "sweep", "--counter", "400", "--counter-step-s", "0.05",
                          "--bayes", "scale=uniform(1,3)", "--trials", "4", "--parallel", "1", "--name", "bc",
                          "--partition", PARTITION, "--time", "5", "--wait-timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sweep = runs / "bc"
        wait_for(lambda: (sweep / "sweep.json").is_file() and json.loads((sweep / "sweep.json").read_text())["job_ids"],
                 60, "the first wave")
        assert cli(["cancel", str(sweep)]) == 0
        out, _ = p.communicate(timeout=90)
    finally:
        p.kill()
    assert p.returncode == 0, out
    assert "was cancelled ('hpctrain cancel'): no further waves after 1 of 4 trials" in out
    meta = json.loads((sweep / "sweep.json").read_text())
    assert len(meta["job_ids"]) == 1 and len(meta["trials"]) == 1


def test_plain_sbatch_template_requeues_and_resumes(runs, blobs, mpi_env):
    pytest.importorskip("hpctrain.train.trainer")
    import sys

    repo = Path(__file__).resolve().parents[1]
    work = runs.parent
    # 2 ranks over mpi4py, started by the template's `srun --mpi=pmix hpctrain train --requeue`,
    # which waits at step boundary 3 for the signal (--test-hold-at), so it lands mid-run
    epochs = 60
    cfg = write_cfg(work / "t.yaml", blobs, "tmpl", run={"epochs": epochs}, data={"batch_size": 4},
                    checkpoint={"every_steps": 1000}, comm={"backend": "mpi"})
    env = dict(mpi_env, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(["sbatch", "--parsable", f"--partition={PARTITION}", "--time=10", "--cpus-per-task=1",
                          "--ntasks-per-node=2",
                          f"--chdir={work}", f"--output={work}/tmpl-%j.log", str(repo / "slurm" / "train.sbatch"),
                          str(cfg), "--test-hold-at", "3"],
                         capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    job = out.strip().split(";")[0]
    run_dir = work / "runs" / "tmpl"
    try:
        wait_for(lambda: held(run_dir), 90, "the template run to wait at step boundary 3")
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        assert drive(run_dir, 150) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    assert [e["kind"] for e in events(run_dir, "requeue")] == ["preemption"]
    assert [e["restart_count"] for e in events(run_dir, "started")] == [0, 1]
    assert [e["ntasks"] for e in events(run_dir, "started")] == [2, 2]
    assert json.loads((run_dir / "result.json").read_text())["step"] == epochs * 60
    s = run_status(run_dir)
    assert s.state == "COMPLETED" and s.requeues == 1 and s.preemptions == 1
    batch = (work / f"tmpl-{job}.log").read_text()  # srun ran `hpctrain train --requeue`, which reports the end
    assert "checkpoint written; requeueing (preempted (1))" in batch
    assert f"hpctrain train: completed at step {epochs * 60}" in batch


@pytest.mark.slow
def test_two_rank_preemption_matches_an_uninterrupted_two_rank_run(runs, blobs, monkeypatch):
    # both ranks see USR2, agree at the step boundary, checkpoint together; rank 0 requeues
    pytest.importorskip("hpctrain.train.trainer")
    import torch

    from hpctrain.train.checkpoint import load

    monkeypatch.chdir(runs.parent)
    cfg = write_cfg(runs.parent / "two.yaml", blobs, "two", run={"epochs": 12}, data={"batch_size": 4},
                    checkpoint={"every_steps": 100})
    for name, hold in (("two-ref", []), ("two-pre", ["--test-hold-at", "2"])):
        assert submit(str(cfg), "--time", "10", "--ntasks-per-node", "2", "--name", name, *hold) == 0
    ref, pre = runs.parent / "runs" / "two-ref", runs.parent / "runs" / "two-pre"
    assert drive(ref, 240) == "COMPLETED"  # the node has 2 CPUs: the jobs run one after the other
    wait_for(lambda: held(pre), 90, "the 2-rank run to wait at step boundary 2")
    subprocess.run(["scancel", "--signal=USR2", job_of(pre)], check=True, timeout=30)
    assert drive(pre, 240) == "COMPLETED"
    assert [e["kind"] for e in events(pre, "requeue")] == ["preemption"]
    assert [e["ntasks"] for e in events(pre, "started")] == [2, 2]
    got, want = load(pre / "checkpoints" / "final.pt"), load(ref / "checkpoints" / "final.pt")
    assert got["step"] == want["step"] == 12 * 60
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k


def test_sweep_trial_survives_preemption_and_rerun_does_not_resubmit(runs, capsys):
    args = ["sweep", "--counter", "60", "--counter-step-s", "0.1", "--grid", "scale=1,2", "--parallel", "2",
            "--name", "sw", "--partition", PARTITION, "--time", "5", "--wait-timeout", "120", "--test-hold-at", "5"]
    assert cli([*args, "--no-wait"]) == 0
    sweep = runs / "sw"
    t0 = sweep / "trials" / "trial-0"
    # every trial waits at step boundary 5 for its signal: each array element gets one
    for t in (t0, sweep / "trials" / "trial-1"):
        wait_for(lambda t=t: held(t), 90, f"{t.name} to wait at step boundary 5")
        element = events(t, "started")[0]["job_id"]  # the array element's own SLURM_JOB_ID
        subprocess.run(["scancel", "--signal=USR2", element], check=True, timeout=30)
    for i in (0, 1):
        assert drive(sweep / "trials" / f"trial-{i}", 120) == "COMPLETED"
    assert [e["kind"] for e in events(t0, "requeue")] == ["preemption"]
    capsys.readouterr()
    assert cli(args) == 0  # the same command again: waits on the sweep, submits nothing
    out = capsys.readouterr().out
    assert "exists (2 trials); waiting on it instead of resubmitting" in out and "2 completed, 0 failed" in out
    assert len(json.loads((sweep / "sweep.json").read_text())["job_ids"]) == 1
    assert json.loads((t0 / "result.json").read_text())["params"] == reference(60, 4)


def test_random_sweep_runs_as_one_array(runs, capsys):
    rc = cli(["sweep", "--counter", "10", "--counter-step-s", "0.01", "--random", "scale=loguniform(1e-4,1e-1)",
              "--trials", "3", "--parallel", "2", "--name", "rnd", "--partition", PARTITION, "--time", "5",
              "--wait-timeout", "120"])
    out = capsys.readouterr().out
    assert rc == 0, out
    sweep = runs / "rnd"
    import csv

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3
    scales = [float(r["scale"]) for r in rows]
    assert all(1e-4 <= s <= 1e-1 for s in scales) and len(set(scales)) == 3
    want = reference(10, 4)
    loss = 0.5 * sum((x - i) ** 2 for i, x in enumerate(want))
    for r, s in zip(rows, scales):  # the counter's loss is linear in its scale: each trial ran its own point
        assert float(r["loss"]) == pytest.approx(s * loss)
    assert len(json.loads((sweep / "sweep.json").read_text())["job_ids"]) == 1
    assert "#SBATCH --array=0-2%2" in next((sweep / "slurm" / "submitit").glob("*_submission.sh")).read_text()
    assert f"best: trial {scales.index(min(scales))} loss=" in out
    assert cli(["status"]) == 0
    assert "sweep rnd: 3 trials: COMPLETED=3" in capsys.readouterr().out


def test_logs_follow_shows_new_lines_and_returns_when_the_job_ends(runs):
    import sys

    run_dir, _ = submit_counter(runs, "follow", 60, 0.1, "--time", "5")
    log = run_dir / "logs" / "rank-0.log"
    wait_for(lambda: log.is_file() and log.stat().st_size > 0, 60, "the job to start writing its log")
    cmd = [sys.executable, "-m", "hpctrain.cli", "logs", str(run_dir), "-f"]
    import threading

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    watchdog = threading.Timer(60, p.kill)  # bounded: a follow that never returns is killed (and fails below)
    watchdog.start()
    try:
        first = p.stdout.readline()  # the log is not empty, so this returns at once
        running = not (run_dir / "result.json").exists()
        rest = p.stdout.read()  # (not communicate(timeout=): it would skip what readline buffered)
        p.wait(timeout=10)
    finally:
        watchdog.cancel()
        p.kill()
    assert "Starting with JobEnvironment" in first and running  # followed from mid-run ...
    assert "Job completed successfully" in rest and p.returncode == 0  # ... to the end, then returned
    assert (first + rest) == log.read_text()
    assert run_status(run_dir).state == "COMPLETED"


def test_cancel_a_running_job(runs, capsys):
    run_dir, job = submit_counter(runs, "cx", 600, 0.1, "--time", "5")
    wait_for(lambda: (run_dir / "checkpoints" / "counter.json").is_file(), 60, "the job to run")
    assert cli(["cancel", str(run_dir)]) == 0
    assert f"scancel {job}" in capsys.readouterr().out
    wait_for(lambda: (show_job(job) or {}).get("JobState") in ("CANCELLED", None), 30, "slurmctld to cancel it")
    assert cli(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "CANCELLED" in out and "cancelled by 'hpctrain cancel'" in out
    assert not (run_dir / "result.json").exists() and not events(run_dir, "requeue")
    time.sleep(2)  # nothing brings it back: no self-requeue, no retry
    assert (show_job(job) or {}).get("JobState") in ("CANCELLED", None)
    assert run_status(run_dir).state == "CANCELLED"


# ------------------------------------------------------------------ --wait

def test_submit_wait_returns_0_once_the_job_has_completed(runs, capsys):
    rc = submit("--counter", "10", "--counter-step-s", "0.02", "--name", "w-ok", "--time", "5", "--wait",
                "--poll", "0.5", "--wait-timeout", "120")
    out = capsys.readouterr().out
    assert rc == 0, out
    run_dir = runs / "w-ok"
    assert json.loads((run_dir / "result.json").read_text())["params"] == reference(10, 4)  # done when it returned
    job = job_of(run_dir)
    changes = [line.split()[2] for line in out.splitlines() if line.startswith("[")]
    assert changes[-1] == "COMPLETED" and changes.count("COMPLETED") == 1 and f"job {job}" in out
    assert "run 'w-ok' COMPLETED after" in out and "requeues 0, retries 0" in out
    assert run_status(run_dir).state == "COMPLETED"


def test_submit_wait_returns_1_when_the_job_fails(runs, capsys):
    rc = submit("--counter", "10", "--counter-step-s", "0.02", "--counter-fail", "--name", "w-bad", "--time", "5",
                "--retries", "1", "--retry-backoff", "1", "--wait", "--poll", "0.5", "--wait-timeout", "120")
    out = capsys.readouterr().out
    assert rc == 1, out
    run_dir = runs / "w-bad"
    assert "FAILED" in out and "not retried (permanent error)" in out and "permanent_error is set" in out
    assert "run 'w-bad' ended FAILED after" in out and f"hpctrain logs {shlex.quote(str(run_dir))} " in out
    assert not (run_dir / "result.json").exists() and not events(run_dir, "retry")


def test_status_wait_waits_through_a_requeue_to_the_end(runs):
    import sys

    # --restart requeue keeps the job id: Slurm's own requeue, with its hold
    run_dir, job = submit_counter(runs, "w-rq", 60, 0.1, "--time", "5", "--restart", "requeue",
                                  "--test-hold-at", "5")
    cmd = [sys.executable, "-m", "hpctrain.cli", "status", str(run_dir), "--wait", "--poll", "0.5",
           "--wait-timeout", "150"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        wait_for(lambda: held(run_dir), 60, "the counter to wait at step boundary 5")
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        wait_for(lambda: events(run_dir, "requeue"), 30, "the job to requeue itself")
        assert p.poll() is None  # requeued is not finished: still waiting
        # released here as in drive(): the waiter only watches, and must see the second attempt through
        wait_for(lambda: release_if_requeued(job) or p.poll() is not None, 120, "the waiter to return")
        out = p.stdout.read()
    finally:
        p.kill()
    assert p.returncode == 0, out
    changes = [line.split()[2] for line in out.splitlines() if line.startswith("[")]
    assert changes[-3:] == ["REQUEUED", "RUNNING", "COMPLETED"], out
    assert "run 'w-rq' COMPLETED after" in out and "requeues 1, retries 0" in out
    assert [e["restart_count"] for e in events(run_dir, "started")] == [0, 1]
    assert json.loads((run_dir / "result.json").read_text())["params"] == reference(60, 4)


def test_preempted_job_restarts_without_a_hold_and_without_a_manual_release(runs, capsys):
    # issue 18: a requeued job waits ~121 s (Reason=BeginTime, Slurm's credential lifetime) and
    # nothing inside the job can lift it; the default restart submits a new job for the run dir
    # from the batch script's after-step, which Slurm may start at once. Nothing here releases it.
    run_dir, job = submit_counter(runs, "nohold", 60, 0.1, "--time", "5", "--test-hold-at", "5")
    wait_for(lambda: held(run_dir), 60, "the counter to wait at step boundary 5")
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    wait_for(lambda: events(run_dir, "resubmitted"), 60, "the after-step to submit the next attempt")
    new = events(run_dir, "resubmitted")[0]["job_id"]
    assert new != job and job_of(run_dir) == new
    rec = show_job(new)
    assert rec is not None and rec["EligibleTime"] == rec["SubmitTime"], rec  # never held

    def finished():
        s = run_status(run_dir, tail=0)
        return s.state if s.state in journal.TERMINAL else None
    assert wait_for(finished, 100, "the run to finish (no release: a held job would still wait)") == "COMPLETED"
    assert [e["restart"] for e in events(run_dir, "requeue")] == ["resubmit"]
    assert [e["job_id"] for e in events(run_dir, "started")] == [job, new]
    st = journal.fold(journal.read_events(run_dir))
    assert (st.requeues, st.preemptions, st.retries) == (1, 1, 0)  # a restart, not a crash retry
    assert json.loads((run_dir / "result.json").read_text())["params"] == reference(60, 4)
    assert cli(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"job        {new}" in out and "COMPLETED" in out


def test_site_sbatch_options_reach_slurm_reservation_and_dependency(runs):
    # issue 18: options hpctrain has no flag for pass through --sbatch: the jobs run inside a
    # reservation created here, and the second waits for the first through --dependency
    import getpass
    import uuid

    resv = f"hpctrain-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["scontrol", "create", "reservation", f"ReservationName={resv}", "StartTime=now",
                           "Duration=10", f"Users={getpass.getuser()}", "Nodes=ALL", "Flags=IGNORE_JOBS"],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    try:
        first, job1 = submit_counter(runs, "resv-1", 30, 0.1, "--time", "5", "--sbatch", f"reservation={resv}")
        second, job2 = submit_counter(runs, "resv-2", 10, 0.05, "--time", "5", "--sbatch", f"reservation={resv}",
                                      "--sbatch", f"dependency=afterok:{job1}")
        rec = show_job(job2)
        assert rec["Reservation"] == resv and f"afterok:{job1}" in rec["Dependency"], rec
        assert drive(first, 120) == "COMPLETED" and drive(second, 120) == "COMPLETED"
        # the dependency held the second until the first had finished
        assert events(second, "started")[0]["time"] >= events(first, "completed")[0]["time"]
        for run_dir in (first, second):
            assert json.loads(RunDir(run_dir).spec.read_text())["spec"]["sbatch"][0] == f"reservation={resv}"
    finally:
        _delete_reservation(resv)


def _delete_reservation(resv: str) -> None:
    # slurmctld refuses ("in use") while a job of the reservation is still completing; a
    # reservation left behind holds every node and stalls the tests after this one
    deadline = time.monotonic() + 90
    while True:
        p = subprocess.run(["scontrol", "delete", f"ReservationName={resv}"], capture_output=True, text=True,
                           timeout=30)
        if p.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"reservation {resv} could not be deleted: {p.stderr.strip()}")
        time.sleep(1)
