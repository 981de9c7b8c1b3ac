"""Pure parts of the task farm: task-file validation, placement and retries, resource
advertisement, the journal and the progress text. No MPI, no processes."""

from __future__ import annotations

import json

import pytest

from hpctrain.farm import journal
from hpctrain.farm.progress import bar_line, summary_table
from hpctrain.farm.resources import advertise, parse_per_worker
from hpctrain.farm.scheduler import Attempt, Resources, Scheduler
from hpctrain.farm.tasks import FarmError, parse_line, parse_tasks


def _write(tmp_path, lines):
    p = tmp_path / "tasks.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def _task(i, **kw):
    rec = {"id": f"t{i}", "fn": "hpctrain.farm.builtin:noop", **kw}
    return parse_line(json.dumps(rec), i)


# --- task files -------------------------------------------------------------------------------

def test_parse_valid_file(tmp_path):
    p = _write(tmp_path, [
        json.dumps({"id": "a", "cmd": ["echo", "hi"], "cpus": 2, "mem_gb": 1.5}),
        "",
        json.dumps({"id": 7, "fn": "hpctrain.farm.builtin:sleep", "args": {"seconds": 0}, "gpus": 1}),
    ])
    tasks = parse_tasks(p)
    assert [t.id for t in tasks] == ["a", "7"]
    assert tasks[0].cmd == ("echo", "hi") and tasks[0].cpus == 2 and tasks[0].mem_gb == 1.5
    assert tasks[1].kind == "fn" and tasks[1].args == {"seconds": 0} and tasks[1].gpus == 1
    assert tasks[1].cpus == 1  # default


@pytest.mark.parametrize("line, fragment", [
    ('{"id": "a", "cmd": ["x"]', "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"id": "a"}', "exactly one of 'cmd'"),
    ('{"id": "a", "cmd": ["x"], "fn": "os:getcwd"}', "got both"),
    ('{"cmd": ["x"]}', "missing 'id'"),
    ('{"id": "a", "cmd": []}', "empty list"),
    ('{"id": "a", "fn": "hpctrain.farm.builtin:no_such_fn"}', "has no function 'no_such_fn'"),
    ('{"id": "a", "fn": "no_such_module_xyz:f"}', "cannot be imported"),
    ('{"id": "a", "fn": "not a ref"}', "is not of the form"),
    ('{"id": "a", "cmd": ["x"], "cpu": 2}', "unknown key 'cpu'. Did you mean 'cpus'?"),
    ('{"id": "a", "cmd": ["x"], "cpus": "two"}', "expected an integer"),
    ('{"id": "a", "cmd": ["x"], "cpus": -1}', "cpus must be >= 0"),
    ('{"id": "../etc", "cmd": ["x"]}', "is not allowed"),
    ('{"id": "a", "cmd": ["x"], "timeout": 0}', "timeout must be a finite number of seconds > 0, got 0"),
    ('{"id": "a", "cmd": ["x"], "timeout": NaN}', "timeout must be a finite number of seconds > 0, got nan"),
    ('{"id": "a", "cmd": ["x"], "timeout": Infinity}', "got inf; leave 'timeout' out to use --timeout"),
    ('{"id": "a", "cmd": ["x"], "mem_gb": NaN}', "mem_gb must be a finite number >= 0, got nan"),
    ('{"id": "a", "cmd": ["x"], "mem_gb": -Infinity}', "mem_gb must be a finite number >= 0, got -inf"),
    ('{"id": "a", "cmd": ["x"], "args": {"k": 1}}', "only applies to 'fn'"),
])
def test_bad_lines_named(tmp_path, line, fragment):
    p = _write(tmp_path, [json.dumps({"id": "ok", "cmd": ["true"]}), line])
    with pytest.raises(FarmError) as e:
        parse_tasks(p)
    msg = str(e.value)
    assert "line 2:" in msg and fragment in msg and "nothing was run" in msg


def test_duplicate_ids_and_all_errors_reported(tmp_path):
    p = _write(tmp_path, [json.dumps({"id": "a", "cmd": ["true"]}), "{oops", json.dumps({"id": "a", "cmd": ["x"]})])
    with pytest.raises(FarmError) as e:
        parse_tasks(p)
    msg = str(e.value)
    assert "2 bad task line(s)" in msg
    assert "line 2: not valid JSON" in msg
    assert "line 3: duplicate id 'a' (first on line 1)" in msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FarmError, match="does not exist"):
        parse_tasks(tmp_path / "nope.jsonl")
    with pytest.raises(FarmError, match="has no tasks"):
        parse_tasks(_write(tmp_path, ["", "  "]))


# --- scheduler --------------------------------------------------------------------------------

def test_pull_fifo_and_resource_fit():
    tasks = [_task(0, cpus=2), _task(1), _task(2), _task(3, cpus=2)]
    s = Scheduler(tasks, retries=0)
    s.add_worker(1, Resources(1, 0, 8.0))
    s.add_worker(2, Resources(2, 0, 8.0))
    # the 1-cpu worker skips the 2-cpu head and takes the oldest task it can run
    assert [a.task.id for a in s.assign(1, 0.0)] == ["t1"]
    assert [a.task.id for a in s.assign(2, 0.0)] == ["t0"]
    assert s.assign(2, 0.0) == []  # full
    assert s.finish(1, "t1", Attempt(attempt=1, worker=1, ok=True), 0.1) == "succeeded"
    assert [a.task.id for a in s.assign(1, 0.1)] == ["t2"]
    s.finish(2, "t0", Attempt(attempt=1, worker=2, ok=True), 0.2)
    assert [a.task.id for a in s.assign(2, 0.2)] == ["t3"]
    assert s.assign(1, 0.2) == []


def test_several_tasks_at_once_within_resources():
    tasks = [_task(i, cpus=1, mem_gb=3) for i in range(5)]
    s = Scheduler(tasks, retries=0)
    s.add_worker(1, Resources(4, 0, 10.0))
    # 4 cpus but 10 GB: memory allows only 3 at once
    assert len(s.assign(1, 0.0)) == 3


def test_retries_backoff_and_final_failure():
    s = Scheduler([_task(0), _task(1, retries=0)], retries=2, backoff=1.0, backoff_max=1.5)
    s.add_worker(1, Resources(2, 0, 1.0))
    assert len(s.assign(1, 0.0)) == 2
    assert s.finish(1, "t1", Attempt(attempt=1, worker=1, error="x"), 0.0) == "failed"  # per-task retries=0
    assert s.finish(1, "t0", Attempt(attempt=1, worker=1, error="e1"), 0.0) == "retry"
    assert s.assign(1, 0.5) == []  # backing off until t=1.0
    assert s.next_wakeup() == 1.0
    [a] = s.assign(1, 1.0)
    assert a.attempt == 2
    assert s.finish(1, "t0", Attempt(attempt=2, worker=1, error="e2"), 1.0) == "retry"
    assert s.next_wakeup() == 2.5  # 2 s capped at 1.5
    [a] = s.assign(1, 2.5)
    assert a.attempt == 3
    assert s.finish(1, "t0", Attempt(attempt=3, worker=1, error="e3"), 3.0) == "failed"
    assert [x.error for x in s.states["t0"].attempts] == ["e1", "e2", "e3"]
    assert s.done() and s.counts()["failed"] == 2


def test_backoff_of_a_task_retried_past_1024_times_does_not_overflow():
    s = Scheduler([_task(0)], retries=2000, backoff=1.0, backoff_max=5.0)
    s.add_worker(1, Resources(1, 0, 1.0))
    now = 0.0
    for _ in range(1100):  # 2 ** 1100 is too large for a float
        [a] = s.assign(1, now)
        assert s.finish(1, "t0", Attempt(attempt=a.attempt, worker=1, error="x"), now) == "retry"
        now = s.next_wakeup()
    assert now == 1 + 2 + 4 + 5.0 * 1097  # doubling, then capped at --backoff-max


@pytest.mark.parametrize("option, value, fragment", [
    ("backoff", float("nan"), "--backoff must be a finite number of seconds >= 0, got nan"),
    ("backoff", float("inf"), "--backoff must be a finite number of seconds >= 0, got inf"),
    ("backoff_max", float("nan"), "--backoff-max must be a finite number of seconds >= 0, got nan"),
    ("kill_grace", float("nan"), "--kill-grace must be a finite number of seconds >= 0, got nan"),
    ("timeout", float("nan"), "--timeout must be a finite number of seconds > 0, got nan"),
    ("timeout", float("inf"), "--timeout must be a finite number of seconds > 0, got inf"),
    ("heartbeat", float("nan"), "--heartbeat must be a finite number of seconds > 0, got nan"),
    ("heartbeat", float("inf"), "--heartbeat must be a finite number of seconds > 0, got inf"),
])
def test_farm_options_that_are_not_finite_are_refused(tmp_path, option, value, fragment):
    from hpctrain.farm.driver import FarmConfig

    with pytest.raises(FarmError) as e:
        FarmConfig(tasks=tmp_path / "t.jsonl", out=tmp_path / "o", **{option: value})
    assert fragment in str(e.value)


def test_lost_worker_requeues_its_tasks_and_ignores_late_reports():
    s = Scheduler([_task(0), _task(1)], retries=1, backoff=0.0)
    s.add_worker(1, Resources(1, 0, 1.0))
    s.add_worker(2, Resources(1, 0, 1.0))
    [a1] = s.assign(1, 0.0)
    [a2] = s.assign(2, 0.0)
    assert s.lose_worker(1, 5.0, "lost") == [a1.task.id]
    assert s.assign(1, 5.0) == []  # dead workers get nothing
    s.finish(2, a2.task.id, Attempt(attempt=1, worker=2, ok=True), 5.0)
    [again] = s.assign(2, 5.0)
    assert again.task.id == a1.task.id and again.attempt == 2
    # the lost worker's late report is stale
    assert s.finish(1, a1.task.id, Attempt(attempt=1, worker=1, ok=True), 6.0) is None
    assert s.finish(2, a1.task.id, Attempt(attempt=2, worker=2, ok=True), 6.0) == "succeeded"
    assert s.done()


def test_unplaceable_task_fails_with_a_hint():
    s = Scheduler([_task(0, cpus=4), _task(1)], retries=3)
    s.add_worker(1, Resources(2, 0, 1.0))
    assert s.fail_unplaceable() == ["t0"]
    err = s.states["t0"].attempts[-1].error
    assert "needs cpus=4" in err and "largest: cpus=2" in err and "--cpus-per-worker" in err


def test_gpu_ids_are_handed_out_and_returned():
    s = Scheduler([_task(i, gpus=1, cpus=0) for i in range(3)], retries=0)
    s.add_worker(1, Resources(4, 2, 1.0), gpu_ids=(4, 5))
    got = s.assign(1, 0.0)
    assert sorted(g for a in got for g in a.gpu_ids) == [4, 5]
    s.finish(1, got[0].task.id, Attempt(attempt=1, worker=1, ok=True), 1.0)
    [nxt] = s.assign(1, 1.0)
    assert nxt.gpu_ids == got[0].gpu_ids


def test_max_tasks_cap():
    s = Scheduler([_task(i, cpus=0) for i in range(10)], retries=0)
    s.add_worker(1, Resources(1, 0, 0.0), max_tasks=4)
    assert len(s.assign(1, 0.0)) == 4


# --- resources --------------------------------------------------------------------------------

def test_advertise_splits_node_and_respects_overrides():
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    r, gpus = advertise(env=env, node_cpus=16, node_mem_gb=64, workers_on_node=2, index_on_node=1, worker_index=1)
    assert r == Resources(8, 2, 32.0) and gpus == [2, 3]
    r, _ = advertise(env={}, node_cpus=16, node_mem_gb=64, workers_on_node=4, index_on_node=0, worker_index=5,
                     cpus=[1, 2], mem_gb=[3.0])
    assert r == Resources(2, 0, 3.0)  # lists cycle over workers in rank order
    slurm = {"SLURM_CPUS_PER_TASK": "6", "SLURM_MEM_PER_CPU": "2048", "CUDA_VISIBLE_DEVICES": ""}
    r, _ = advertise(env=slurm, node_cpus=64, node_mem_gb=256, workers_on_node=2, index_on_node=0, worker_index=0)
    assert r == Resources(6, 0, 12.0)


def test_parse_per_worker_errors():
    assert parse_per_worker("1,2", "--cpus-per-worker") == [1, 2]
    with pytest.raises(FarmError, match="--cpus-per-worker 'x'"):
        parse_per_worker("x", "--cpus-per-worker")
    with pytest.raises(FarmError, match="negative"):
        parse_per_worker("-1", "--cpus-per-worker")
    for raw in ("nan", "1,inf"):
        with pytest.raises(FarmError, match="not a finite number"):
            parse_per_worker(raw, "--mem-per-worker", float)


# --- journal and text ---------------------------------------------------------------------------

def test_journal_skips_done_tasks_and_tolerates_torn_tail(tmp_path):
    a, b, c = _task(0), _task(1), _task(2)
    w = journal.JournalWriter(tmp_path)
    w.append(journal.make_record(a, "succeeded", [{"attempt": 1, "worker": 1}]))
    w.append(journal.make_record(b, "failed", [{"attempt": 1, "worker": 1, "error": "boom"}]))
    w.close()
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"id": "t2", "sta')  # a crash mid-write
    recs = journal.load(tmp_path)
    assert set(recs) == {"t0", "t1"} and recs["t1"]["error"] == "boom"
    assert journal.already_done([a, b, c], recs) == {"t0"}
    assert journal.already_done([a, b, c], recs, skip_failed=True) == {"t0", "t1"}
    # a changed definition under the same id runs again
    a2 = parse_line(json.dumps({"id": "t0", "fn": "hpctrain.farm.builtin:sleep", "args": {"seconds": 0}}), 1)
    assert journal.already_done([a2], recs) == set()


def test_journal_malformed_middle_line(tmp_path):
    (tmp_path / "journal.jsonl").write_text('garbage\n{"id": "a", "state": "succeeded"}\n')
    with pytest.raises(FarmError, match="line 1 is malformed"):
        journal.load(tmp_path)


def test_progress_and_summary_text():
    line = bar_line({"succeeded": 3, "failed": 1, "running": 2, "waiting": 1}, 8, 2.0, width=8)
    assert line.startswith("[####....] 4/8 ok 3 failed 1 running 2 retrying 1")
    assert "2.0/s" in line and "ETA 00:02" in line
    table = summary_table([{"id": "a", "state": "succeeded", "attempts": 2, "error": ""},
                           {"id": "bad", "state": "failed", "attempts": 3, "error": "exited with code 7"}],
                          skipped=4, makespan_s=1.5, lost_workers=[])
    assert "succeeded      1 (1 after retries)" in table and "skipped (done) 4" in table
    assert "bad       3  exited with code 7" in table


def test_losing_every_worker_fails_what_is_left():
    s = Scheduler([_task(i) for i in range(3)], retries=0)
    s.add_worker(1, Resources(1, 0, 1.0))
    [a] = s.assign(1, 0.0)
    s.lose_worker(1, 1.0, "lost")
    s.fail_remaining("every worker was lost")
    assert s.done() and s.counts()["failed"] == 3
    assert s.states[a.task.id].attempts[-1].error == "lost"
    assert s.states["t2"].attempts[-1].error == "every worker was lost"


@pytest.mark.parametrize("raw", [
    {"id": "a", "cmd": ["x", "y"], "cpus": 2, "mem_gb": 3, "timeout": 5, "env": {"K": "v"}},
    {"id": 3, "fn": "hpctrain.farm.builtin:sleep", "args": {"seconds": 1}, "retries": 0, "isolate": True,
     "gpus": 1, "mem_gb": 0.5},
])
def test_fast_path_equals_the_generic_loader(raw):
    from hpctrain.config import from_mapping
    from hpctrain.farm.tasks import TaskSpec, _fast_spec

    assert _fast_spec(raw) == from_mapping(TaskSpec, raw)


def test_module_failing_at_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "brokenmod_farm.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    p = _write(tmp_path, [json.dumps({"id": "a", "fn": "brokenmod_farm:f"})])
    with pytest.raises(FarmError, match="line 1: fn 'brokenmod_farm:f': importing module 'brokenmod_farm' failed "
                                        "with SyntaxError"):
        parse_tasks(p)
