"""The task farm in one process (no launcher): the CLI's error handling, function tasks
(in-process and isolated), restart from the journal, and the built-in shard-conversion and
profiling kinds checked against numpy."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hpctrain.cli import main

HELPERS = textwrap.dedent('''
    import os, sys, time

    def nap(seconds, pidfile):
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(seconds)

    def boom(ctx):
        raise ValueError(f"bad input in {ctx.task_id} attempt {ctx.attempt}")

    def quits():
        sys.exit(3)

    def echo(value, ctx):
        return {"value": value, "task": ctx.task_id, "dir_ok": ctx.task_dir.is_dir()}
''')


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    d = tmp_path / "mods"
    d.mkdir()
    (d / "farmlocalhelpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(d))
    # isolated fn tasks run in a child python, which needs the module too
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]))
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    return d


def _tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def _journal(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines() if x.strip()]
    return {r["id"]: r for r in recs}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_function_tasks_results_failures_and_isolated_timeout(tmp_path, helpers, capsys):
    pidfile = tmp_path / "nap.pid"
    tf = _tasks(tmp_path / "t.jsonl", [
        {"id": "echo", "fn": "farmlocalhelpers:echo", "args": {"value": [1, 2]}},
        {"id": "boom", "fn": "farmlocalhelpers:boom"},
        {"id": "quits", "fn": "farmlocalhelpers:quits"},
        {"id": "nap", "fn": "farmlocalhelpers:nap", "args": {"seconds": 30, "pidfile": str(pidfile)}, "timeout": 1},
    ])
    out = tmp_path / "out"
    rc = main(["farm", str(tf), "--out", str(out), "--retries", "1", "--backoff", "0", "--kill-grace", "0.5",
               "--local-workers", "2", "--no-progress"])
    assert rc == 1
    recs = _journal(out)
    assert recs["echo"]["state"] == "succeeded"
    assert json.loads((out / "tasks" / "echo" / "result.json").read_text()) == \
        {"value": [1, 2], "task": "echo", "dir_ok": True}
    boom = recs["boom"]
    assert boom["state"] == "failed" and boom["attempts"] == 2
    assert boom["history"][1]["error"] == "ValueError: bad input in boom attempt 2"
    assert "Traceback" in boom["history"][1]["stderr_tail"]
    assert recs["quits"]["state"] == "failed" and "SystemExit" in recs["quits"]["error"]
    nap = recs["nap"]  # a timeout moves the function into a child process, which is killed
    assert nap["state"] == "failed" and nap["attempts"] == 2 and "timed out after 1 s" in nap["error"]
    assert not _alive(int(pidfile.read_text()))
    err = capsys.readouterr().err
    assert "failed         3" in err and "boom" in err


def test_restart_skips_done_tasks_and_reruns_changed_ones(tmp_path, helpers, capsys):
    count = tmp_path / "count"
    cmd = ["sh", "-c", f'echo x >> "{count}"']
    tf = _tasks(tmp_path / "t.jsonl", [{"id": f"c{i}", "cmd": cmd} for i in range(5)])
    out = tmp_path / "out"
    args = ["farm", str(tf), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0
    assert len(count.read_text().split()) == 5  # the second run did nothing
    assert "0 task(s) to run, 5 already done" in capsys.readouterr().err
    _tasks(tf, [{"id": f"c{i}", "cmd": cmd + (["changed"] if i == 0 else [])} for i in range(5)])
    assert main(args) == 0
    assert len(count.read_text().split()) == 6  # only the changed definition ran again


@pytest.mark.parametrize("argv_tail, fragment", [
    (["--retries", "-1"], "--retries must be >= 0"),
    (["--timeout", "0"], "--timeout must be a finite number of seconds > 0, got 0.0"),
    (["--cpus-per-worker", "two"], "--cpus-per-worker 'two' is not a number"),
    # NaN passed every '< 0' check: a NaN backoff hung a retry forever, a NaN timeout or
    # heartbeat silently meant none
    (["--backoff", "nan", "--backoff-max", "1"], "--backoff must be a finite number of seconds >= 0, got nan"),
    (["--backoff-max", "nan"], "--backoff-max must be a finite number of seconds >= 0, got nan"),
    (["--backoff-max", "inf"], "--backoff-max must be a finite number of seconds >= 0, got inf"),
    (["--timeout", "nan"], "--timeout must be a finite number of seconds > 0, got nan"),
    (["--timeout", "inf"], "got inf; leave --timeout out for no limit"),
    (["--heartbeat", "nan"], "--heartbeat must be a finite number of seconds > 0, got nan"),
    (["--kill-grace", "inf"], "--kill-grace must be a finite number of seconds >= 0, got inf"),
    (["--mem-per-worker", "nan"], "--mem-per-worker 'nan' has a value that is not a finite number"),
])
def test_bad_options_are_one_line_errors(tmp_path, helpers, capsys, argv_tail, fragment):
    tf = _tasks(tmp_path / "t.jsonl", [{"id": "a", "cmd": ["true"]}])
    assert main(["farm", str(tf), "--out", str(tmp_path / "o"), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpctrain farm: error:") and fragment in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_a_task_timeout_that_is_not_finite_is_refused(tmp_path, capsys, value):
    tf = tmp_path / "t.jsonl"
    tf.write_text('{"id": "a", "cmd": ["true"], "timeout": ' + value + '}\n')  # Python's json reads both
    assert main(["farm", str(tf), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"line 1: timeout must be a finite number of seconds > 0, got {float(value)!r}" in err
    assert not (tmp_path / "o").exists()


def test_bad_task_file_and_out_dir(tmp_path, helpers, capsys):
    tf = tmp_path / "t.jsonl"
    tf.write_text('{"id": "a", "cmd": ["true"]}\n{"id": "b", "fn": "farmlocalhelpers:missing"}\n')
    assert main(["farm", str(tf), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "line 2: fn 'farmlocalhelpers:missing': module 'farmlocalhelpers' has no function 'missing'" in err
    assert not (tmp_path / "o").exists()
    good = _tasks(tmp_path / "g.jsonl", [{"id": "a", "cmd": ["true"]}])
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["farm", str(good), "--out", str(blocker)]) == 2
    assert "is not a writable directory" in capsys.readouterr().err


def _csv(path: Path, rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 3)).round(4)
    y = rng.integers(0, 2, size=n)
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{c}" for r, c in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return np.column_stack([x, y])


def test_builtin_shard_conversion_and_profiling(tmp_path, helpers):
    from hpctrain.data.shards import Manifest, iter_arrays

    rng = np.random.default_rng(0)
    truth = {f"part{i}": _csv(tmp_path / f"part{i}.csv", rng, 50 + 10 * i) for i in range(3)}
    tasks = [{"id": f"conv-{name}", "fn": "hpctrain.farm.builtin:convert_to_shards",
              "args": {"input": str(tmp_path / f"{name}.csv"), "out": str(tmp_path / "shards" / name),
                       "label": "label", "shuffle": False, "rows_per_shard": 25}} for name in truth]
    tf = _tasks(tmp_path / "t.jsonl", tasks)
    out = tmp_path / "out"
    assert main(["farm", str(tf), "--out", str(out), "--local-workers", "2", "--no-progress"]) == 0
    for name, data in truth.items():
        m = Manifest.load(tmp_path / "shards" / name)
        xs, ys = zip(*[(x, y) for _, x, y in iter_arrays(m)])
        np.testing.assert_allclose(np.concatenate(xs), data[:, :3].astype(np.float32))
        np.testing.assert_array_equal(np.concatenate(ys), data[:, 3].astype(np.int64))
        res = json.loads((out / "tasks" / f"conv-{name}" / "result.json").read_text())
        assert res["rows"] == len(data) and res["shards"] == len(m.shards) == -(-len(data) // 25)
    # a rerun of a finished conversion (e.g. not journaled before a crash) is a no-op
    from hpctrain.farm.builtin import convert_to_shards

    again = convert_to_shards(str(tmp_path / "part0.csv"), str(tmp_path / "shards" / "part0"), label="label",
                              shuffle=False, rows_per_shard=25)
    assert again["rows"] == 50

    ptasks = [{"id": f"prof-{name}", "fn": "hpctrain.farm.builtin:profile_shards",
               "args": {"dir": str(tmp_path / "shards" / name), "out": str(tmp_path / "reports" / name),
                        "sample_size": 50}} for name in ("part0", "part1")]
    pf = _tasks(tmp_path / "p.jsonl", ptasks)
    assert main(["farm", str(pf), "--out", str(tmp_path / "pout"), "--local-workers", "2", "--no-progress"]) == 0
    for name in ("part0", "part1"):
        assert (tmp_path / "reports" / name / "report.html").is_file()
        rep = json.loads((tmp_path / "reports" / name / "report.json").read_text())
        data = truth[name]
        assert rep["rows"] == len(data)
        cols = {c["name"]: c for c in rep["columns"]}
        for j, col in enumerate("abc"):  # the profile's statistics agree with numpy's
            np.testing.assert_allclose(cols[col]["mean"], data[:, j].mean(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(cols[col]["max"], data[:, j].max(), rtol=1e-6)
        assert rep["classes"]["counts"] == {str(k): int(v) for k, v in zip(*np.unique(data[:, 3].astype(int),
                                                                                      return_counts=True))}


def test_a_worker_runs_several_tasks_at_once_within_its_cpus(tmp_path, helpers):
    # one worker with 3 cpus, six 1-cpu tasks of 0.4 s: three run at a time, never four
    tf = _tasks(tmp_path / "t.jsonl", [{"id": f"s{i}", "cmd": ["sleep", "0.4"]} for i in range(6)])
    out = tmp_path / "out"
    assert main(["farm", str(tf), "--out", str(out), "--cpus-per-worker", "3", "--no-progress"]) == 0
    spans = [(h["started"], h["started"] + h["elapsed_s"]) for r in _journal(out).values() for h in r["history"]]
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak == 3


class _SilentDispatcher:
    """An endpoint whose dispatcher has vanished: it sends the worker one task, then nothing."""

    def __init__(self, wire):
        self.inbox = [(0, ("run", [(wire, 1, (), None)]))]
        self.sent = []

    def send(self, dest, msg):
        self.sent.append((dest, msg))

    def poll(self, timeout, wake=None):
        if self.inbox:
            return [self.inbox.pop()]
        time.sleep(min(timeout, 0.02))
        return []


def test_worker_gives_up_on_a_silent_dispatcher_and_kills_its_tasks(tmp_path):
    from hpctrain.farm.loop import LoopOptions, work

    pidfile = tmp_path / "pid"
    wire = {"id": "long", "cmd": ["sh", "-c", f'sleep 60 & echo $! > "{pidfile}"; wait'], "fn": None, "args": {},
            "cpus": 1, "gpus": 0, "mem_gb": 0.0, "env": {}, "isolate": False}
    ep = _SilentDispatcher(wire)
    # returns at all (instead of waiting forever on the dispatcher), and says why with its code
    rc = work(ep, 1, LoopOptions(out=tmp_path / "out", heartbeat=2.0))  # long enough for sh to start
    assert rc == 3
    assert ("beat",) in [m for _, m in ep.sent]  # it kept telling rank 0 it was alive meanwhile
    deadline = time.monotonic() + 5
    while _alive(int(pidfile.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(pidfile.read_text()))
