"""Pure pieces of the Slurm layer: Slurm facts parsing, the interrupt classification and
requeue/retry decisions, the event fold, the signal flag, sweeps' point generation, and
status/cancel through a fake runner seam (no Slurm needed)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from datetime import datetime

import pytest

from hpctrain.errors import ClusterError, ConfigError
from hpctrain.slurm import journal
from hpctrain.slurm.environment import (job_facts, parse_scontrol_record, parse_time_limit, seconds_left,
                                        show_job)
from hpctrain.slurm.requeue import PreemptionFlag, RequeuePolicy, classify_interrupt, decide_requeue
from hpctrain.slurm.retry import RetryPolicy, decide_retry
from hpctrain.slurm.runner import CmdResult, run_cmd, use_runner

RECORD = ("JobId=42 JobName=my run x UserId=root(0) JobState=PENDING Reason=BeginTime Requeue=1 Restarts=2 "
          "BatchFlag=1 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 StartTime=2026-11-27T06:10:00 "
          "EndTime=2026-11-27T06:20:00 StdOut=/a b/c=d/batch.log Power=")


def test_scontrol_record_keeps_values_with_spaces():
    rec = parse_scontrol_record(RECORD)
    assert rec["JobName"] == "my run x"
    assert rec["StdOut"] == "/a b/c=d/batch.log"
    assert rec["Restarts"] == "2" and rec["Power"] == ""


@pytest.mark.parametrize("text, secs", [("10", 600), ("1:30", 90), ("01:02:03", 3723), ("2-03", 2 * 86400 + 3 * 3600),
                                        ("1-00:00:10", 86410), ("UNLIMITED", None), ("Partition_Limit", None)])
def test_time_limits(text, secs):
    assert parse_time_limit(text) == secs


def test_seconds_left_from_end_time_not_elapsed():
    rec = parse_scontrol_record(RECORD)
    assert seconds_left(rec, datetime(2026, 11, 27, 6, 18, 30)) == 90.0
    assert seconds_left({**rec, "TimeLimit": "UNLIMITED"}, datetime(2026, 11, 27, 6, 18, 30)) is None


def test_job_facts_from_env():
    f = job_facts({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "3", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert (f.executor, f.job_id, f.restart_count, f.rank, f.ntasks, f.is_root) == ("slurm", "7", 3, 1, 2, False)
    loc = job_facts({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "99", "SUBMITIT_LOCAL_GLOBALID": "0"})
    assert loc.executor == "local" and loc.is_root and loc.job_id == "local-99"
    assert job_facts({}).executor == "none"
    with pytest.raises(ClusterError, match="SLURM_RESTART_COUNT"):
        job_facts({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "x"})


@pytest.mark.parametrize("sigterm, left, kind", [
    (False, 600.0, "preemption"),   # a 9-minute-early USR2 of a 10-minute job is a preemption (submitit: timeout)
    (False, 85.0, "timeout"),
    (False, 0.0, "timeout"),
    (False, None, "preemption"),    # no time limit: it can only be a preemption
    (True, 85.0, "terminated"),
])
def test_classify_interrupt(sigterm, left, kind):
    assert classify_interrupt(got_sigterm=sigterm, seconds_left=left, signal_delay_s=90) == kind


def test_timeouts_are_limited_preemptions_are_not():
    pol = RequeuePolicy(max_timeouts=3)
    assert decide_requeue("timeout", timeouts_so_far=2, preemptions_so_far=0, policy=pol).requeue
    d = decide_requeue("timeout", timeouts_so_far=3, preemptions_so_far=0, policy=pol)
    assert not d.requeue and "--max-timeouts 3" in d.reason
    assert decide_requeue("preemption", timeouts_so_far=3, preemptions_so_far=10_000, policy=pol).requeue
    capped = RequeuePolicy(max_preemptions=1)
    assert not decide_requeue("preemption", timeouts_so_far=0, preemptions_so_far=1, policy=capped).requeue
    assert not decide_requeue("terminated", timeouts_so_far=0, preemptions_so_far=0, policy=pol).requeue


def test_policy_refuses_usr1():
    with pytest.raises(ConfigError, match="NCCL"):
        RequeuePolicy(signal="USR1")


def _st(*events):
    return journal.fold([{"event": e[0], **e[1]} for e in events])


def test_retry_decisions():
    pol = RetryPolicy(retries=2, backoff_s=10, backoff_max_s=15)
    crashed = _st(("submitted", {"job_id": 1}), ("started", {"job_id": 1}))
    d = decide_retry(crashed, exit_code=137, completed=False, policy=pol)
    assert d.action == "retry" and d.delay_s == 10
    twice = _st(("submitted", {"job_id": 1}), ("retry", {"job_id": 2}), ("retry", {"job_id": 3}),
                ("started", {"job_id": 3}))
    assert decide_retry(twice, exit_code=1, completed=False, policy=pol).action == "fail"
    once = _st(("submitted", {"job_id": 1}), ("retry", {"job_id": 2}), ("started", {"job_id": 2}))
    assert decide_retry(once, exit_code=1, completed=False, policy=pol).delay_s == 15  # capped
    permanent = _st(("started", {"job_id": 1}), ("failed", {"job_id": 1, "permanent": True, "message": "bad key"}))
    d = decide_retry(permanent, exit_code=1, completed=False, policy=pol)
    assert d.action == "fail" and d.reason == "not retried (permanent error): bad key"
    # the state a waiter sees as soon as the failure is recorded says what it says after the
    # after-step's gave_up (a waiter may return in between: the test_submit_wait flake)
    after = _st(("started", {"job_id": 1}), ("failed", {"job_id": 1, "permanent": True, "message": "bad key"}),
                ("gave_up", {"job_id": 1, "reason": d.reason}))
    assert (permanent.state, permanent.reason) == (after.state, after.reason) == ("FAILED", d.reason)
    requeued = _st(("started", {"job_id": 1}), ("requeue", {"job_id": 1, "kind": "timeout"}))
    assert decide_retry(requeued, exit_code=0, completed=False, policy=pol).action == "none"
    assert decide_retry(crashed, exit_code=0, completed=True, policy=pol).action == "none"


def test_fold_counts_and_races():
    st = _st(("started", {"job_id": "5"}), ("submitted", {"job_id": "5"}))  # the job logged first
    assert st.state == "RUNNING"
    st = _st(("submitted", {"job_id": "5"}), ("started", {"job_id": "5", "restart_count": 0}),
             ("requeue", {"job_id": "5", "kind": "timeout"}), ("started", {"job_id": "5", "restart_count": 1}),
             ("requeue", {"job_id": "5", "kind": "preemption"}), ("started", {"job_id": "5", "restart_count": 2}),
             ("completed", {"job_id": "5"}), ("already_completed", {"job_id": "5"}))
    assert (st.state, st.timeouts, st.preemptions, st.requeues) == ("COMPLETED", 1, 1, 2)
    st = _st(("started", {"job_id": "5"}), ("cancelled", {"job_id": "5"}), ("stopped", {"job_id": "5"}))
    assert st.state == "CANCELLED"
    st = _st(("started", {"job_id": "5"}), ("failed", {"job_id": "5", "permanent": True}),
             ("submitted", {"job_id": "6", "fresh": True}))
    assert st.state == "PENDING" and not st.permanent and st.job_id == "6"


def test_torn_event_line_is_skipped(tmp_path):
    journal.record(tmp_path, "started", job_id="1")
    with open(journal.events_path(tmp_path), "a") as f:
        f.write('{"event": "compl')
    assert journal.fold(journal.read_events(tmp_path)).state == "RUNNING"


def test_flag_handler_only_sets_the_flag():
    flag = PreemptionFlag().install()
    try:
        assert not flag.is_set()
        signal.raise_signal(signal.SIGUSR2)
        assert flag.is_set() and not flag.terminated
        signal.raise_signal(signal.SIGTERM)
        assert flag.terminated  # Slurm's SIGTERM after USR2 upgrades the reason
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_after_the_work_a_repeated_preemption_signal_does_not_kill_but_sigterm_does():
    code = ("import os, signal, time\n"
            "from hpctrain.slurm.requeue import PreemptionFlag\n"
            "f = PreemptionFlag().install()\n"
            "os.kill(os.getpid(), signal.SIGUSR2)\n"
            "f.uninstall(keep_preemption_signal=True)\n"
            "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL\n"
            "os.kill(os.getpid(), signal.SIGUSR2)\n"
            "time.sleep(0.2)\n"
            "print('alive after the second USR2', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(5)\n"
            "print('still alive')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "alive after the second USR2" in p.stdout, p.stderr
    assert p.returncode == -signal.SIGTERM and "still alive" not in p.stdout


def test_second_sigterm_is_not_swallowed():
    code = ("import os, signal, time\n"
            "from hpctrain.slurm.requeue import PreemptionFlag\n"
            "f = PreemptionFlag().install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "assert f.is_set()\n"
            "print('first swallowed into the flag', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(5)\n"
            "print('still alive')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGTERM
    assert "first swallowed" in p.stdout and "still alive" not in p.stdout


def test_run_job_exits_at_once_when_already_completed(tmp_path, monkeypatch):
    from hpctrain.slurm.job import RunJob

    for k in ("SLURM_JOB_ID", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "result.json").write_text(json.dumps({"status": "completed", "step": 7}))
    before = (tmp_path / "result.json").stat().st_mtime_ns
    calls = []
    out = RunJob(run_dir=str(tmp_path), task=lambda d, stop: calls.append(d) or "completed")()
    assert out == "completed" and calls == []
    assert (tmp_path / "result.json").stat().st_mtime_ns == before
    assert journal.read_events(tmp_path)[-1]["event"] == "already_completed"


def test_counter_resume_equals_uninterrupted(tmp_path, monkeypatch):
    from hpctrain.slurm.counter import CounterTask, reference

    monkeypatch.delenv("SLURM_PROCID", raising=False)
    task = CounterTask(steps=12, step_s=0.0)
    polls = []
    assert task(tmp_path, lambda: polls.append(1) or len(polls) > 5) == "interrupted"
    assert json.loads((tmp_path / "checkpoints" / "counter.json").read_text())["step"] == 5
    assert task(tmp_path, lambda: False) == "completed"
    assert json.loads((tmp_path / "result.json").read_text())["params"] == reference(12, 4)


def test_permanent_errors():
    from hpctrain.slurm.job import RequeueFailed, is_permanent

    assert is_permanent(ConfigError("x")) and is_permanent(ImportError("x"))
    assert is_permanent(FileNotFoundError("data"))
    assert not is_permanent(RuntimeError("CUDA error")) and not is_permanent(MemoryError())
    assert not is_permanent(RequeueFailed("x"))


# ------------------------------------------------------------------ runner seam, status, cancel

class FakeSlurm:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, argv, timeout, env):
        self.calls.append(list(argv))
        for prefix, res in self.answers:
            if list(argv[:len(prefix)]) == prefix:
                return CmdResult(tuple(argv), *res)
        return CmdResult(tuple(argv), 1, "", "unexpected command")


def test_run_cmd_takes_argv_only():
    with pytest.raises(TypeError):
        run_cmd("scontrol ping")


def test_missing_scontrol_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # as inside a container without Slurm's clients
    with pytest.raises(ClusterError, match="'scontrol' not found on PATH; inside a container, bind-mount"):
        show_job("1")


def test_show_job_unknown_is_none():
    fake = FakeSlurm([(["scontrol", "show", "job"], (1, "", "slurm_load_jobs error: Invalid job id specified"))])
    with use_runner(fake):
        assert show_job("999") is None


def _run_dir(tmp_path, *events):
    d = tmp_path / "r"
    for name, data in events:
        journal.record(d, name, **data)
    return d


def test_status_pending_after_requeue_is_requeued(tmp_path):
    from hpctrain.slurm.status import run_status

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}), ("started", {"job_id": "42"}),
                 ("requeue", {"job_id": "42", "kind": "preemption", "reason": "preempted (1)"}))
    (d / "metrics.jsonl").write_text('{"step": 3, "loss": 0.5}\n{"step": 4, "loss": 0.25}\n')
    with use_runner(FakeSlurm([(["scontrol", "show", "job", "-o", "42"], (0, RECORD, ""))])):
        s = run_status(d)
    assert (s.state, s.requeues, s.last_step, s.last_metrics) == ("REQUEUED", 2, 4, {"loss": 0.25})
    assert s.reason.startswith("preempted") and "'scontrol update JobId=42 StartTime=now'" in s.reason
    assert s.slurm == "PENDING, reason BeginTime, restarts 2"
    journal.record(d, "started", job_id="42", restart_count=1)  # the next attempt runs: the cause is history
    st = journal.fold(journal.read_events(d))
    assert st.state == "RUNNING" and st.reason.startswith("resumed after: preempted")


def test_status_failed_shows_failing_rank_log(tmp_path):
    from hpctrain.slurm.status import format_status, run_status

    d = _run_dir(tmp_path, ("started", {"job_id": "7"}),
                 ("failed", {"job_id": "7", "rank": 1, "permanent": True, "message": "ConfigError: bad key"}))
    (d / "logs").mkdir()
    (d / "logs" / "rank-1.log").write_text("".join(f"line {i}\n" for i in range(50)))
    s = run_status(d, live=False, tail=5)
    assert s.state == "FAILED" and s.failing_rank == 1 and s.log_tail == [f"line {i}" for i in range(45, 50)]
    assert "bad key" in format_status(s) and "rank-1.log" in format_status(s)


def test_status_never_calls_sacct(tmp_path):
    from hpctrain.slurm.status import run_status

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}))
    fake = FakeSlurm([(["scontrol"], (0, RECORD.replace("Restarts=2", "Restarts=0"), ""))])
    with use_runner(fake):
        assert run_status(d).state == "PENDING"
    assert all(c[0] != "sacct" for c in fake.calls)


def test_cancel_uses_scancel_and_records(tmp_path):
    from hpctrain.slurm.status import cancel_run

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}))
    fake = FakeSlurm([(["scancel"], (0, "", ""))])
    with use_runner(fake):
        assert cancel_run(d) == ["42"]
    assert fake.calls == [["scancel", "42"]]
    assert journal.fold(journal.read_events(d)).state == "CANCELLED"


def test_cancel_of_a_run_that_ended_changes_nothing(tmp_path):
    from hpctrain.slurm.status import RunEnded, cancel_run, run_status

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}), ("started", {"job_id": "42"}),
                 ("completed", {"job_id": "42"}))
    before = journal.events_path(d).read_text()
    fake = FakeSlurm([(["scancel"], (0, "", ""))])
    with use_runner(fake), pytest.raises(RunEnded, match=r"run 'r' has already ended \(COMPLETED\)") as e:
        cancel_run(d)
    assert e.value.state == "COMPLETED" and fake.calls == []
    assert journal.events_path(d).read_text() == before  # no 'cancelled' event over a finished run
    assert run_status(d, live=False).state == "COMPLETED"


def _sweep_dir(tmp_path, trial_events, **meta):
    from hpctrain.slurm.sweep import save_sweep, trial_dir

    d = tmp_path / "sw"
    save_sweep(d, {"name": "sw", "kind": "grid", "metric": "loss", "mode": "min", "job_ids": ["50"],
                   "trials": [{"index": i, "params": {"x": i}} for i in range(len(trial_events))], **meta})
    for i, evs in enumerate(trial_events):
        for name, data in evs:
            journal.record(trial_dir(d, i), name, **data)
    return d


def test_cancel_of_a_sweep_whose_trials_all_ended_changes_nothing(tmp_path):
    from hpctrain.slurm.status import RunEnded, cancel_run

    done = [("submitted", {"job_id": "50_0"}), ("completed", {"job_id": "50_0"})]
    failed = [("submitted", {"job_id": "50_1"}), ("gave_up", {"job_id": "50_1"})]
    d = _sweep_dir(tmp_path, [done, failed])
    fake = FakeSlurm([(["scancel"], (0, "", ""))])
    with use_runner(fake), pytest.raises(RunEnded, match="all 2 trials ended .COMPLETED=1, FAILED=1"):
        cancel_run(d)
    assert fake.calls == [] and not journal.events_path(d).exists()
    # one trial still running: the sweep is cancelled as before
    d2 = _sweep_dir(tmp_path / "b", [done, [("submitted", {"job_id": "50_1"})]])
    with use_runner(fake):
        assert cancel_run(d2) == ["50"]
    # a bayes sweep between waves has ended trials but more to come
    d3 = _sweep_dir(tmp_path / "c", [done], planned=4)
    with use_runner(fake):
        assert cancel_run(d3) == ["50"]


@pytest.mark.parametrize("text, fragment", [
    ("{", "is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("[]", "is not a sweep record"),
    ('{"trials": [{"index": 0}], "job_ids": [], "metric": "loss", "mode": "min"}', "is not a sweep record"),
])
def test_a_damaged_sweep_json_is_named_with_the_fix(tmp_path, text, fragment):
    from hpctrain.slurm.status import cancel_run
    from hpctrain.slurm.sweep import load_sweep, sweep_rows

    (tmp_path / "sweep.json").write_text(text)
    for call in (load_sweep, sweep_rows, cancel_run):
        with pytest.raises(ConfigError) as e:
            call(tmp_path)
        msg = str(e.value)
        assert str(tmp_path / "sweep.json") in msg and fragment in msg and "run the sweep again" in msg


def test_a_damaged_spec_json_is_reported(tmp_path):
    from hpctrain.slurm.status import damaged_records

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}))
    assert damaged_records(d) == []  # no spec.json: nothing to say
    (d / "slurm" / "spec.json").write_text('{"cluster": "slurm"}')
    assert damaged_records(d) == []
    (d / "slurm" / "spec.json").write_text("{\n")
    [w] = damaged_records(d)
    assert str(d / "slurm" / "spec.json") in w and "damaged" in w and "submission.pkl" in w


def test_runs_base_named_by_option_or_variable_must_be_a_directory(tmp_path):
    from hpctrain.slurm.status import RunNotFound, runs_base

    afile = tmp_path / "f.csv"
    afile.write_text("")
    assert runs_base(str(tmp_path), {}) == tmp_path
    assert runs_base(None, {"HPCTRAIN_RUNS": str(tmp_path)}) == tmp_path
    assert runs_base(None, {}) == __import__("pathlib").Path("runs")  # the default may be absent
    with pytest.raises(RunNotFound, match="--runs-dir '/nonexistent/x' does not exist"):
        runs_base("/nonexistent/x", {})
    with pytest.raises(RunNotFound, match=f"HPCTRAIN_RUNS='{afile}' is not a directory"):
        runs_base(None, {"HPCTRAIN_RUNS": str(afile)})


def test_resolve_run_names_the_choices(tmp_path):
    from hpctrain.slurm.status import RunNotFound, resolve_run

    _run_dir(tmp_path, ("submitted", {"job_id": "1"}))
    assert resolve_run("r", tmp_path) == (tmp_path / "r").resolve()
    with pytest.raises(RunNotFound, match="Runs under .*: r"):
        resolve_run("nope", tmp_path)


# ------------------------------------------------------------------ sweeps

def test_grid_is_the_product_in_order():
    from hpctrain.slurm.sweep import parse_grid

    pts = parse_grid(["optimizer.lr=1e-3,1e-2", "model.kind=mlp,cnn"])
    assert pts == [{"optimizer.lr": 1e-3, "model.kind": "mlp"}, {"optimizer.lr": 1e-3, "model.kind": "cnn"},
                   {"optimizer.lr": 1e-2, "model.kind": "mlp"}, {"optimizer.lr": 1e-2, "model.kind": "cnn"}]


def test_random_points_are_seeded_and_in_range():
    from hpctrain.slurm.sweep import parse_space, sample_random

    space = parse_space(["lr=loguniform(1e-4,1e-1)", "drop=uniform(0,0.5)", "w=int(1,4)", "opt=choice(sgd,adam)"])
    a, b = sample_random(space, 50, seed=3), sample_random(space, 50, seed=3)
    assert a == b
    for p in a:
        assert 1e-4 <= p["lr"] <= 1e-1 and 0 <= p["drop"] <= 0.5 and p["w"] in (1, 2, 3, 4)
        assert p["opt"] in ("sgd", "adam")


@pytest.mark.parametrize("item, match", [("lr", "expected key="), ("lr=gauss(0,1)", "expected uniform"),
                                         ("lr=loguniform(0,1)", "0 < low"), ("lr=uniform(2,1)", "low must be")])
def test_bad_sweep_axes(item, match):
    from hpctrain.slurm.sweep import parse_space

    with pytest.raises(ConfigError, match=match):
        parse_space([item])


def test_trial_count_is_capped_before_any_point_exists(monkeypatch):
    from hpctrain.slurm import sweep

    assert sweep.MAX_TRIALS == 10_000
    monkeypatch.setattr(sweep, "MAX_TRIALS", 5)

    def no_product(*a):
        raise AssertionError("the grid was built before its size was checked")

    monkeypatch.setattr(sweep.itertools, "product", no_product)
    with pytest.raises(ConfigError, match=r"the grid \(2 x 3 values\) asks for 6 trials; a sweep has at most 5"):
        sweep.parse_grid(["a=1,2", "b=1,2,3"])
    space = sweep.parse_space(["lr=uniform(0.1,0.2)"])
    monkeypatch.setattr(sweep.Dist, "sample", no_product)
    with pytest.raises(ConfigError, match="--trials 6 asks for 6 trials; a sweep has at most 5"):
        sweep.sample_random(space, 6, 0)


def test_grid_axis_given_twice_is_refused():
    from hpctrain.slurm.sweep import parse_grid

    with pytest.raises(ConfigError, match="'a' is already an axis"):
        parse_grid(["a=1,2", "a=3"])


@pytest.mark.parametrize("item", ["lr=uniform(0,inf)", "lr=uniform(-inf,1)", "lr=loguniform(1e-4,nan)"])
def test_sweep_bounds_must_be_finite(item):
    from hpctrain.slurm.sweep import parse_space

    with pytest.raises(ConfigError, match="takes finite bounds|low must be"):
        parse_space([item])


def test_max_array_size_from_scontrol_and_the_index_check():
    from hpctrain.slurm.sweep import check_array_indices, max_array_size

    conf = "Configuration data as of 2025-01-01T00:00:00\nMaxArraySize            = 1001\nMaxJobCount = 10000\n"
    with use_runner(FakeSlurm([(["scontrol", "show", "config"], (0, conf, ""))])):
        assert max_array_size() == 1001
    with use_runner(FakeSlurm([(["scontrol", "show", "config"], (1, "", "Unable to contact slurm controller"))])):
        assert max_array_size() is None  # unknown: sbatch has the last word
    check_array_indices(1001, 1001)
    check_array_indices(5000, None)
    with pytest.raises(ConfigError, match=r"1002 trials \(array indices 0-1001\) but this cluster's MaxArraySize "
                                          r"is 1001 \(indices 0-1000\)"):
        check_array_indices(1002, 1001)


def test_sweep_metric_names():
    from hpctrain.slurm.sweep import check_metric, metric_names

    train = metric_names(counter=False, val_split=True)
    assert train[0] == "val_loss" and "val_accuracy" in train
    check_metric("val_macro_f1", train)
    with pytest.raises(ConfigError, match="Did you mean 'val_accuracy'"):
        check_metric("val_acc", train)
    with pytest.raises(ConfigError, match="reports loss"):
        check_metric("val_loss", metric_names(counter=True, val_split=True))
    with pytest.raises(ConfigError, match="data.val_split is null"):
        check_metric("val_loss", metric_names(counter=False, val_split=False), val_split=False)


def test_overrides_round_trip_through_config_overrides():
    from hpctrain.config import apply_overrides
    from hpctrain.slurm.sweep import to_overrides

    point = {"optimizer.lr": 1e-05, "optimizer.name": "sgd", "model.hidden": [8, 4], "x.y": True, "x.z": 3}
    out = apply_overrides({}, to_overrides(point))
    assert out == {"optimizer": {"lr": 1e-05, "name": "sgd"}, "model": {"hidden": [8, 4]}, "x": {"y": True, "z": 3}}


def test_best_row_and_results_csv(tmp_path):
    from hpctrain.slurm.sweep import best_row, write_results

    rows = [{"trial": 0, "state": "COMPLETED", "lr": 0.1, "loss": 0.5},
            {"trial": 1, "state": "FAILED", "lr": 0.2, "loss": None},
            {"trial": 2, "state": "COMPLETED", "lr": 0.3, "loss": 0.25}]
    assert best_row(rows, "loss", "min")["trial"] == 2
    assert best_row(rows, "loss", "max")["trial"] == 0
    text = write_results(tmp_path, rows).read_text().splitlines()
    assert text[0] == "trial,state,lr,loss" and text[2] == "1,FAILED,0.2,"


def test_optuna_journal_storage_in_the_sweep_dir(tmp_path):
    optuna = pytest.importorskip("optuna")
    from hpctrain.slurm.sweep import journal_storage, optuna_distributions, parse_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = optuna_distributions(parse_space(["x=uniform(-3,3)"]))
    study = optuna.create_study(study_name="s", storage=journal_storage(tmp_path),
                                sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(3):
        t = study.ask(dists)
        study.tell(t.number, (t.params["x"] - 1) ** 2)
    again = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    assert len(again.trials) == 3 and (tmp_path / "optuna.journal").is_file()
    assert again.best_value == min((t.params["x"] - 1) ** 2 for t in study.trials)


def test_logs_follow_returns_when_the_run_is_final(tmp_path, capsys):
    from hpctrain.cli import main

    d = _run_dir(tmp_path, ("started", {"job_id": "local-1"}), ("completed", {"job_id": "local-1"}))
    (d / "logs").mkdir()
    (d / "logs" / "rank-1.log").write_text("a\nb\nc\n")
    assert main(["logs", str(d), "--rank", "1", "-f", "-n", "2"]) == 0
    assert capsys.readouterr().out == "b\nc\n"
    assert main(["logs", str(d), "--rank", "3"]) == 2
    assert "rank-1.log" in capsys.readouterr().err


def test_status_of_a_job_slurm_forgot_is_failed_not_pending_forever(tmp_path):
    from hpctrain.slurm.status import run_status

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42_3"}))
    fake = FakeSlurm([(["scontrol"], (1, "", "slurm_load_jobs error: Invalid job id specified"))])
    with use_runner(fake):
        s = run_status(d)
    assert s.state == "FAILED" and "gone from slurmctld" in s.reason


def test_status_requeue_in_flight_vs_requeued_attempt_that_never_started(tmp_path):
    from hpctrain.slurm.status import run_status

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}), ("started", {"job_id": "42", "restart_count": 0}),
                 ("requeue", {"job_id": "42", "kind": "preemption"}))
    ending = RECORD.replace("JobState=PENDING", "JobState=FAILED").replace("Restarts=2", "Restarts=0")
    with use_runner(FakeSlurm([(["scontrol"], (0, ending, ""))])):
        assert run_status(d).state == "REQUEUED"  # the old attempt is still ending
    lost = RECORD.replace("JobState=PENDING", "JobState=FAILED").replace("Restarts=2", "Restarts=1")
    with use_runner(FakeSlurm([(["scontrol"], (0, lost, ""))])):
        s = run_status(d)
    assert s.state == "FAILED" and "before the requeued attempt started" in s.reason


# ------------------------------------------------------------------ hpctrain train --requeue (the templates' entry)

def _requeue_policy(**kw):
    from hpctrain.slurm.requeue import RequeuePolicy

    return RequeuePolicy(**kw)


@pytest.fixture
def in_slurm_job(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith(("SLURM_", "SUBMITIT_", "OMPI_", "PMI")):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")


def _fake_train(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(run=SimpleNamespace(dir=tmp_path / "run"))
    seen = []

    def train(cfg, *, stop_requested):
        seen.append(stop_requested)
        signal.raise_signal(signal.SIGUSR2)  # what scancel --signal=USR2 does mid-run
        assert stop_requested()  # the handler only raised the flag; the "trainer" checkpoints and returns
        return type("R", (), {"status": "interrupted", "step": 3, "epoch": 0, "metrics": {}})()
    return cfg, train, seen


def test_train_requeue_checkpoints_then_scontrol_requeues(tmp_path, in_slurm_job):
    from hpctrain.slurm.job import train_requeue_aware

    cfg, train, seen = _fake_train(tmp_path)
    unlimited = RECORD.replace("TimeLimit=00:10:00", "TimeLimit=UNLIMITED").replace("JobState=PENDING",
                                                                                    "JobState=RUNNING")
    fake = FakeSlurm([(["scontrol", "show", "job"], (0, unlimited, "")), (["scontrol", "requeue"], (0, "", ""))])
    with use_runner(fake):
        rc, res = train_requeue_aware(cfg, _requeue_policy(), train=train)
    assert rc == 0 and res is None and len(seen) == 1
    assert ["scontrol", "requeue", "77"] in fake.calls
    req = [e for e in journal.read_events(cfg.run.dir) if e["event"] == "requeue"]
    assert [e["kind"] for e in req] == ["preemption"]
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # handler removed once the work is over


def test_train_requeue_without_scontrol_says_so(tmp_path, in_slurm_job, monkeypatch):
    from hpctrain.slurm.job import train_requeue_aware

    cfg, train, _ = _fake_train(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # a container without Slurm's client commands
    with pytest.raises(ClusterError, match="'scontrol' not found on PATH; inside a container"):
        train_requeue_aware(cfg, _requeue_policy(), train=train)


def test_train_requeue_on_a_completed_run_runs_nothing(tmp_path, in_slurm_job):
    from hpctrain.slurm.job import train_requeue_aware

    cfg, train, seen = _fake_train(tmp_path)
    cfg.run.dir.mkdir()
    (cfg.run.dir / "result.json").write_text(json.dumps({"status": "completed", "step": 9}))
    assert train_requeue_aware(cfg, _requeue_policy(), train=train) == (0, None) and seen == []


def test_submitit_job_objects_never_run_sacct(tmp_path, monkeypatch, caplog):
    import logging

    pytest.importorskip("submitit")
    from hpctrain.slurm.submit import _import_submitit, slurm_job_class

    ran = []
    monkeypatch.setattr(subprocess, "check_output", lambda cmd, *a, **k: ran.append(cmd) or b"")
    job = slurm_job_class()(folder=tmp_path, job_id="123")
    assert job.state == "UNKNOWN" and not job.done()
    assert not any("sacct" in str(c) for c in ran)
    _import_submitit()
    with caplog.at_level(logging.WARNING, logger="submitit"):
        logging.getLogger("submitit").warning("Call #1 - Bypassing sacct error x, status may be inaccurate.")
        logging.getLogger("submitit").warning("another warning")
    assert "Bypassing" not in caplog.text and "another warning" in caplog.text


def test_mpi_plugin_is_picked_from_srun_list():
    from hpctrain.slurm.environment import pick_mpi_plugin

    listing = "MPI plugin types are...\n\tpmix\n\tnone\n\tpmi2\nspecific pmix plugin versions available: pmix_v4\n"
    assert pick_mpi_plugin(listing) == "pmix"
    assert pick_mpi_plugin("MPI plugin types are...\n\tnone\n\tpmi2\n") is None


@pytest.mark.parametrize("backend,ranks,extra,want", [
    ("horovod", 2, [], "--mpi=pmix"),              # several MPI ranks: PMIx chosen from srun --mpi=list
    # issue 18: one rank calls MPI_Init too, and under the site default 'none' it aborts
    ("horovod", 1, [], "--mpi=pmix"),
    ("mpi", 1, [], "--mpi=pmix"),
    ("mpi", 2, ["--mpi", "pmi2"], "--mpi=pmi2"),    # an explicit --mpi wins
    ("torch", 2, [], None),                          # torch.distributed needs no MPI plugin
    ("torch", 1, [], None),
])
def test_submit_dry_run_chooses_the_mpi_plugin(tmp_path, capsys, backend, ranks, extra, want):
    import yaml

    from hpctrain.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"name": "m", "dir": str(tmp_path / "run")},
                                   "data": {"dir": str(tmp_path)}, "comm": {"backend": backend}}))
    fake = FakeSlurm([(["srun", "--mpi=list"], (0, "", "MPI plugin types are...\n\tpmix\n\tnone\n"))])
    with use_runner(fake):
        assert main(["submit", str(cfg), "--ntasks-per-node", str(ranks), "--dry-run", *extra]) == 0
    srun = [line for line in capsys.readouterr().out.splitlines() if line.startswith("srun ")][0]
    if want:
        assert want in srun.split()
    else:
        assert "--mpi" not in srun


def test_submit_runs_dir_places_a_config_run_or_is_refused(tmp_path, capsys, monkeypatch):
    # issue 18: --runs-dir applied to --counter runs only; a config run went to run.dir silently
    import yaml

    from hpctrain.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"name": "m"}, "data": {"dir": str(tmp_path)},
                                   "comm": {"backend": "torch"}}))
    base = tmp_path / "elsewhere"
    assert main(["submit", str(cfg), "--runs-dir", str(base), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"run_dir={base / 'm'}" in out.splitlines() and "runs/m" not in out
    assert main(["submit", str(cfg), "--runs-dir", str(base), "--name", "n2", "--dry-run"]) == 0
    assert f"run_dir={base / 'n2'}" in capsys.readouterr().out.splitlines()
    for extra, where in ((["--set", "run.dir=/tmp/x"], "--set run.dir"), ([], "run.dir in")):
        if not extra:
            cfg.write_text(yaml.safe_dump({"run": {"name": "m", "dir": "/tmp/x"}, "data": {"dir": str(tmp_path)}}))
        assert main(["submit", str(cfg), "--runs-dir", str(base), "--dry-run", *extra]) == 2
        err = capsys.readouterr().err
        assert f"--runs-dir {str(base)!r} and {where}" in err and "drop --runs-dir" in err


# ------------------------------------------------------------------ --wait: deciding when a run has really finished

class FakeTime:
    """The clock and sleep seams of the waiter: sleeping moves the clock, nothing else."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def _obs(state, job="42", recorded=None, **kw):
    from hpctrain.slurm.wait import Observation

    if recorded is None:  # an end is taken from the run dir unless a test says it is slurmctld's view only
        recorded = state in journal.TERMINAL
    return Observation(state=state, job_id=job, recorded=recorded, **kw)


def _poller(*script):
    """Answers the scripted observations in order; polling past the end fails the test."""
    it = iter(script)

    def poll():
        try:
            return next(it)
        except StopIteration:
            raise AssertionError("polled again after the run was final") from None
    return poll


def _wait(script, *, poll_s=5.0, timeout_s=None, settle_s=5.0, t=None):
    from hpctrain.slurm.wait import wait_until_final

    t = t or FakeTime()
    seen = []
    res = wait_until_final(_poller(*script), poll_s=poll_s, timeout_s=timeout_s, clock=t.clock, sleep=t.sleep,
                           on_change=lambda el, o: seen.append((el, o.state, o.job_id)), settle_s=settle_s)
    return res, seen, t


def test_wait_goes_through_requeues_and_retries_until_completed():
    script = [_obs("PENDING"), _obs("RUNNING"), _obs("REQUEUED"), _obs("REQUEUED"), _obs("RUNNING"),
              _obs("PENDING", "43"), _obs("RUNNING", "43"), _obs("COMPLETED", "43", requeues=1, retries=1)]
    res, seen, t = _wait(script)
    assert (res.outcome, res.exit_code, res.elapsed_s) == ("completed", 0, 35.0)
    assert seen == [(0.0, "PENDING", "42"), (5.0, "RUNNING", "42"), (10.0, "REQUEUED", "42"),
                    (20.0, "RUNNING", "42"), (25.0, "PENDING", "43"), (30.0, "RUNNING", "43"),
                    (35.0, "COMPLETED", "43")]  # one line per change: the second REQUEUED poll prints nothing
    assert t.sleeps == [5.0] * 7


@pytest.mark.parametrize("state, code", [("COMPLETED", 0), ("FAILED", 1), ("CANCELLED", 1)])
def test_an_end_the_run_dir_logs_is_final_at_once(state, code):
    res, seen, t = _wait([_obs("RUNNING"), _obs(state)])
    assert (res.exit_code, res.last.state, seen[-1][1]) == (code, state, state)
    assert t.sleeps == [5.0]


def test_an_end_only_slurmctld_reports_must_hold_before_it_counts():
    # the requeue went on: the FAILED glimpse was never an end, and is never printed
    script = [_obs("RUNNING"), _obs("FAILED", recorded=False), _obs("REQUEUED"), _obs("RUNNING"), _obs("COMPLETED")]
    res, seen, _ = _wait(script, poll_s=1.0)
    assert res.exit_code == 0 and [s for _, s, _ in seen] == ["RUNNING", "REQUEUED", "RUNNING", "COMPLETED"]
    # it stays ended (a hard time limit, say): final once it held settle_s over two polls or more
    timeout = _obs("FAILED", recorded=False, slurm_state="TIMEOUT")
    res, seen, t = _wait([_obs("RUNNING")] + [timeout] * 6, poll_s=1.0)
    assert (res.outcome, res.exit_code, res.elapsed_s, seen[-1][1]) == ("ended", 1, 6.0, "FAILED")
    # a slow poll interval does not slow the confirmation down
    res, _, t = _wait([_obs("RUNNING"), timeout, timeout], poll_s=60.0)
    assert res.exit_code == 1 and t.sleeps == [60.0, 5.0]


def test_wait_timeout_polls_once_more_at_the_deadline_then_gives_up():
    from hpctrain.slurm.wait import EXIT_TIMEOUT

    res, _, t = _wait([_obs("RUNNING")] * 4, poll_s=5.0, timeout_s=12.0)
    assert (res.outcome, res.exit_code, res.elapsed_s, res.last.state) == ("timeout", EXIT_TIMEOUT, 12.0, "RUNNING")
    assert t.sleeps == [5.0, 5.0, 2.0]
    res, _, _ = _wait([_obs("RUNNING")] * 3 + [_obs("COMPLETED")], poll_s=5.0, timeout_s=12.0)
    assert res.outcome == "completed"  # ended by the last poll on the deadline: not a timeout


@pytest.mark.parametrize("now, deadline, poll, wake, want", [
    (0.0, None, 5.0, None, 5.0), (0.0, None, 5.0, 2.0, 2.0), (10.0, 12.0, 5.0, None, 2.0),
    (12.0, 12.0, 5.0, None, None), (13.0, 12.0, 5.0, 1.0, None), (0.0, 100.0, 5.0, 7.0, 5.0)])
def test_next_sleep(now, deadline, poll, wake, want):
    from hpctrain.slurm.wait import next_sleep

    assert next_sleep(now, deadline, poll, wake) == want


def test_exit_codes_and_elapsed_format():
    from hpctrain.slurm.wait import exit_code_for, format_elapsed

    assert [exit_code_for(s) for s in ("COMPLETED", "FAILED", "CANCELLED")] == [0, 1, 1]
    with pytest.raises(ValueError, match="REQUEUED"):
        exit_code_for("REQUEUED")
    assert [format_elapsed(s) for s in (0, 59.9, 60, 125, 3723)] == ["0s", "59s", "1m00s", "2m05s", "1h02m03s"]


@pytest.mark.parametrize("kw, match", [
    (dict(wait=True, poll_s=0.0, timeout_s=None), "--poll must be .* > 0, got 0.0"),
    (dict(wait=True, poll_s=-1.0, timeout_s=None), "--poll must be"),
    (dict(wait=True, poll_s=float("nan"), timeout_s=None), "--poll must be"),
    (dict(wait=True, poll_s=None, timeout_s=0.0), "--wait-timeout must be .* > 0"),
    (dict(wait=False, poll_s=2.0, timeout_s=None), "--poll only apply with --wait"),
    (dict(wait=False, poll_s=None, timeout_s=9.0), "--wait-timeout only apply with --wait")])
def test_bad_wait_options(kw, match):
    from hpctrain.slurm.wait import check_wait_options

    with pytest.raises(ConfigError, match=match):
        check_wait_options(**kw)


def test_good_wait_options():
    from hpctrain.slurm.wait import DEFAULT_POLL_S, check_wait_options

    assert check_wait_options(wait=True, poll_s=None, timeout_s=None) == DEFAULT_POLL_S > 0
    assert check_wait_options(wait=True, poll_s=0.5, timeout_s=30.0) == 0.5


def test_wait_run_names_slurms_end_and_points_at_the_logs(tmp_path, capsys):
    from hpctrain.slurm.status import wait_run

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}), ("started", {"job_id": "42", "restart_count": 0}))
    ended = RECORD.replace("JobState=PENDING", "JobState=TIMEOUT").replace("Restarts=2", "Restarts=0")
    t = FakeTime()
    fake = FakeSlurm([(["scontrol", "show", "job"], (0, ended, ""))])
    with use_runner(fake):
        assert wait_run(d, poll_s=2.0, clock=t.clock, sleep=t.sleep) == 1
    out = capsys.readouterr().out.splitlines()
    assert "FAILED" in out[-3] and "Slurm ended the job as TIMEOUT" in out[-3]
    assert out[-2] == "run 'r' ended FAILED after 5s (job 42, Slurm state TIMEOUT)"
    assert f"hpctrain logs {d} " in out[-1] and f"hpctrain status {d}" in out[-1]
    assert t.sleeps == [2.0, 2.0, 1.0]  # held over polls at 0, 2, 4 and 5 s before it counted
    assert {c[0] for c in fake.calls} == {"scontrol"}  # asked, never cancelled


def test_ctrl_c_stops_waiting_and_cancels_nothing(tmp_path, capsys):
    from hpctrain.slurm.status import wait_run

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}), ("started", {"job_id": "42", "restart_count": 0}))
    running = RECORD.replace("JobState=PENDING", "JobState=RUNNING").replace("Reason=BeginTime", "Reason=None")
    t = FakeTime()

    def sleep(s):
        t.sleep(s)
        if len(t.sleeps) == 2:
            raise KeyboardInterrupt
    fake = FakeSlurm([(["scontrol", "show", "job"], (0, running.replace("Restarts=2", "Restarts=0"), ""))])
    with use_runner(fake):
        assert wait_run(d, poll_s=5.0, clock=t.clock, sleep=sleep) == 130
    cap = capsys.readouterr()
    assert "RUNNING" in cap.out and "RUNNING" in cap.err and "nothing was cancelled" in cap.err
    assert f"hpctrain cancel {d}" in cap.err and f"hpctrain status {d} --wait" in cap.err
    assert all(c[0] != "scancel" for c in fake.calls) and len(fake.calls) == 2
    assert journal.fold(journal.read_events(d)).state == "RUNNING"  # nothing recorded a cancel either


def test_status_wait_on_finished_runs_through_the_cli(tmp_path, capsys):
    from hpctrain.cli import main

    ok = _run_dir(tmp_path, ("submitted", {"job_id": "local-1"}), ("started", {"job_id": "local-1"}),
                  ("completed", {"job_id": "local-1"}))
    assert main(["status", str(ok), "--wait", "--poll", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "COMPLETED  job local-1" in out and "run 'r' COMPLETED after" in out
    bad = tmp_path / "b"
    journal.record(bad, "started", job_id="local-2")
    journal.record(bad, "failed", job_id="local-2", rank=1, permanent=True, message="ConfigError: bad key")
    assert main(["status", str(bad), "--wait"]) == 1
    out = capsys.readouterr().out
    assert "FAILED     job local-2  -- not retried (permanent error): ConfigError: bad key" in out
    assert f"hpctrain logs {bad} --rank 1 " in out


@pytest.mark.parametrize("argv, match", [
    (["status", "--wait"], "none was given"),
    (["status", "RUN", "--wait", "--json"], "does not combine with --json"),
    (["status", "RUN", "--wait", "--poll", "0"], "--poll must be"),
    (["status", "RUN", "--poll", "3"], "only apply with --wait"),
    (["submit", "--counter", "5", "--wait", "--poll", "-1"], "--poll must be"),
    (["submit", "--counter", "5", "--wait-timeout", "10"], "only apply with --wait"),
    (["submit", "--counter", "5", "--wait", "--dry-run"], "nothing to --wait for"),
    (["submit", "--counter", "5", "--wait", "--wait-timeout", "9", "--cluster", "local"], "does not apply there")])
def test_bad_wait_input_exits_2_and_submits_nothing(tmp_path, capsys, argv, match):
    from hpctrain.cli import main

    _run_dir(tmp_path, ("submitted", {"job_id": "local-1"}))
    argv = [a.replace("RUN", str(tmp_path / "r")) for a in argv] + ["--runs-dir", str(tmp_path / "runs")]
    fake = FakeSlurm([])
    with use_runner(fake):
        assert main(argv) == 2
    assert re.search(match, capsys.readouterr().err)
    assert fake.calls == [] and not (tmp_path / "runs").exists()


def test_status_of_a_stopped_job_slurm_forgot_is_failed_not_interrupted_forever(tmp_path):
    from hpctrain.slurm.status import run_status

    d = _run_dir(tmp_path, ("submitted", {"job_id": "42"}), ("started", {"job_id": "42"}),
                 ("stopped", {"job_id": "42", "kind": "terminated", "reason": "SIGTERM from Slurm"}))
    with use_runner(FakeSlurm([(["scontrol"], (1, "", "slurm_load_jobs error: Invalid job id specified"))])):
        s = run_status(d)
    assert s.state == "FAILED" and s.reason.startswith("SIGTERM from Slurm; then job 42 is gone from slurmctld")


def test_status_shows_where_the_ranks_ran(tmp_path):
    import json as _json

    from hpctrain.slurm.status import format_status, placement_of, run_status

    run = tmp_path / "r"
    run.mkdir()
    assert placement_of(run) == ""  # no training run yet
    (run / "config.resolved.json").write_text(_json.dumps({"cluster": {"ranks": [
        {"rank": 0, "node": "n1", "device": "cuda:0"}, {"rank": 1, "node": "n1", "device": "cuda:1"},
        {"rank": 2, "node": "n2", "device": "cuda:0"}]}}))
    want = "3 ranks on 2 nodes: n1 (ranks 0-1 on cuda:0,cuda:1), n2 (rank 2 on cuda:0)"
    assert placement_of(run) == want
    s = run_status(run, live=False, tail=0)
    assert f"placement  {want}" in format_status(s) and s.as_dict()["placement"] == want
    (run / "config.resolved.json").write_text("{not json")
    assert placement_of(run) == ""  # a damaged record hides the line, it does not fail status


def test_damaged_event_log_is_said_not_hidden(tmp_path):
    from hpctrain.slurm import journal
    from hpctrain.slurm.status import format_status, run_status

    run = tmp_path / "r"
    journal.record(run, "submitted", job_id="local-1", attempt=0)
    path = journal.events_path(run)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"event": "started", "job_id": "local-1"}\n')
        f.write('{"event": "comp')  # a torn last line (a node died mid-write): expected, not damage
    assert journal.damaged_lines(run) == 0 and len(journal.read_events(run)) == 2
    assert run_status(run, live=False, tail=0).warning == ""
    path.write_bytes(b'[1, 2]\n\xff\xfegarbage\n{"no_event": 1}\n' + path.read_bytes())
    assert journal.damaged_lines(run) == 3
    assert [e["event"] for e in journal.read_events(run)] == ["submitted", "started"]
    s = run_status(run, live=False, tail=0)
    assert s.state == "RUNNING" and "3 line(s) of" in s.warning and "events.jsonl are not events" in s.warning
    assert "warning    3 line(s)" in format_status(s)


def test_fold_follows_a_resubmitted_restart_without_counting_a_retry():
    st = _st(("submitted", {"job_id": "5"}), ("started", {"job_id": "5", "restart_count": 0}),
             ("requeue", {"job_id": "5", "kind": "preemption", "restart": "resubmit"}))
    assert (st.state, st.resubmit_due, st.job_id) == ("REQUEUED", True, "5")
    st = _st(("submitted", {"job_id": "5"}), ("started", {"job_id": "5"}),
             ("requeue", {"job_id": "5", "kind": "preemption", "restart": "resubmit"}),
             ("resubmitted", {"job_id": "6"}))
    assert (st.state, st.resubmit_due, st.job_id, st.retries) == ("REQUEUED", False, "6", 0)
    st = _st(("submitted", {"job_id": "5"}), ("started", {"job_id": "5"}),
             ("requeue", {"job_id": "5", "kind": "timeout", "restart": "requeue"}))
    assert not st.resubmit_due  # Slurm's own requeue: nothing for the after-step to submit


def test_restart_mode_is_validated():
    from hpctrain.errors import ConfigError
    from hpctrain.slurm.requeue import RequeuePolicy

    assert RequeuePolicy().restart == "resubmit"
    with pytest.raises(ConfigError, match="--restart 'later' is not one of resubmit, requeue"):
        RequeuePolicy(restart="later")


def test_hold_for_signal_waits_at_its_poll_once_per_run(tmp_path):
    import threading

    from hpctrain.slurm.job import HoldForSignal

    flag = threading.Event()
    marker = tmp_path / "slurm" / "held"
    marker.parent.mkdir()
    hold = HoldForSignal(flag.is_set, 3, marker, is_root=True, wait_s=0.01)
    assert [hold(), hold()] == [False, False] and not marker.exists()
    seen = []
    t = threading.Thread(target=lambda: seen.append(hold()))
    t.start()
    # the third poll blocks until the "signal": the marker says it is waiting
    while not marker.exists():
        t.join(0.01)
    assert t.is_alive() and seen == []
    flag.set()
    t.join(10)
    assert seen == [True]


def test_run_job_does_not_hold_again_after_the_marker(tmp_path, monkeypatch):
    from hpctrain.rundir import RunDir
    from hpctrain.slurm.job import RunJob

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = RunDir(tmp_path / "run")
    run.hold_marker.parent.mkdir(parents=True)
    run.hold_marker.write_text("1\n")  # an earlier attempt held already
    polls = []

    def task(run_dir, stop_requested):
        polls.extend(stop_requested() for _ in range(5))
        return "completed"
    assert RunJob(run_dir=str(run.path), task=task, hold_at=2)() == "completed"
    assert polls == [False] * 5
