"""The task farm for real: mpirun with 3 ranks (a dispatcher and two workers), started by
the test so it can kill a worker rank, crash the job and restart it from the journal.

Every subprocess has a timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.launcher,
              pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not on PATH")]

REPO = Path(__file__).resolve().parents[1]

HELPERS = textwrap.dedent('''
    import os, signal, time

    def mark(log, tag, ctx=None):
        # one short O_APPEND write per call: lines from concurrent tasks never interleave
        with open(log, "a") as f:
            f.write(f"{tag} {ctx.worker if ctx else -1} {os.getpid()}\\n")

    def gated(log, tag, gate, ctx=None):
        deadline = time.time() + 60
        while not os.path.exists(gate):
            if time.time() > deadline:
                raise TimeoutError("gate never opened")
            time.sleep(0.01)
        mark(log, tag, ctx)

    def kill_my_worker_once(log, tag, marker, ctx=None):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # this is the worker rank itself (in-process fn)
        mark(log, tag, ctx)
''')


@pytest.fixture
def farm_env(tmp_path, mpi_env):
    (tmp_path / "farmhelpers.py").write_text(HELPERS)
    env = dict(mpi_env)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("HPCTRAIN_DEBUG", None)
    return env


def _mpirun(args, env, *, np=3, extra=(), timeout=120, cwd=None, **kw):
    # One cpu per worker unless a test says otherwise: on a big CI node each worker would
    # otherwise run many tasks at once, and which task is in flight at a crash would vary.
    args = list(args)
    if "--cpus-per-worker" not in args:
        args += ["--cpus-per-worker", "1"]
    argv = ["mpirun", "--oversubscribe", "--bind-to", "none", *extra, "-np", str(np),
            sys.executable, "-m", "hpctrain", "farm", *map(str, args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd, **kw)


def _write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines() if line.strip()]


def _marks(log: Path) -> Counter:
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() else Counter()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --- one mixed run checks placement, retries, failures, timeouts and exactly-once --------------

_MIXED: dict = {}


@pytest.fixture
def mixed_run(tmp_path_factory, mpi_env):
    # One farm run (about 4 s) serves the four tests below; they only read its results.
    if not _MIXED:
        _MIXED.update(_run_mixed(tmp_path_factory.mktemp("farm_mixed"), mpi_env))
    return _MIXED


def _run_mixed(tmp_path: Path, mpi_env: dict) -> dict:
    (tmp_path / "farmhelpers.py").write_text(HELPERS)
    farm_env = dict(mpi_env)
    farm_env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), farm_env.get("PYTHONPATH", "")])
    log = tmp_path / "marks.log"
    tasks = [{"id": f"m{i}", "fn": "farmhelpers:mark", "args": {"log": str(log), "tag": f"m{i}"}} for i in range(20)]
    tasks += [{"id": f"big{i}", "fn": "farmhelpers:mark", "args": {"log": str(log), "tag": f"big{i}"}, "cpus": 2}
              for i in range(6)]
    counter = tmp_path / "flaky.count"
    tasks.append({"id": "flaky", "cmd": ["sh", "-c", f'n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n+1)); '
                                                     f'echo $n > "{counter}"; echo "try $n" >&2; [ $n -ge 3 ]']})
    tasks.append({"id": "doomed", "cmd": ["sh", "-c", 'echo "boom-$HPCTRAIN_FARM_ATTEMPT" >&2; exit 7']})
    pidfile = tmp_path / "child.pid"
    tasks.append({"id": "hang", "timeout": 1, "retries": 0,
                  "cmd": ["sh", "-c", f'sleep 60 & echo $! > "{pidfile}"; echo $$ >> "{pidfile}"; wait']})
    tf = _write_tasks(tmp_path / "tasks.jsonl", tasks)
    out = tmp_path / "out"
    p = _mpirun([tf, "--out", out, "--retries", "2", "--backoff", "0.05", "--cpus-per-worker", "1,2",
                 "--kill-grace", "0.5"], farm_env, timeout=120)
    return {"proc": p, "out": out, "log": log, "pidfile": pidfile, "ids": [t["id"] for t in tasks]}


def test_every_task_runs_exactly_once_across_workers(mixed_run):
    p, out = mixed_run["proc"], mixed_run["out"]
    assert p.returncode == 1, p.stdout + p.stderr  # 1: some task failed (doomed, hang)
    marks = _marks(mixed_run["log"])
    expected = {f"m{i}" for i in range(20)} | {f"big{i}" for i in range(6)}
    assert set(marks) == expected and all(n == 1 for n in marks.values()), marks
    recs = _journal(out)
    assert Counter(r["id"] for r in recs) == Counter(mixed_run["ids"])  # one end record per task
    # both workers took work: the load was shared
    workers = {int(line.split()[1]) for line in mixed_run["log"].read_text().splitlines()}
    assert workers == {1, 2}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == 27 and summary["failed"] == 2
    assert "farm summary" in p.stderr and "doomed" in p.stderr and "exited with code 7" in p.stderr


def test_two_cpu_tasks_never_run_on_the_one_cpu_worker(mixed_run):
    rows = [line.split() for line in mixed_run["log"].read_text().splitlines()]
    big_workers = {int(w) for tag, w, _ in rows if tag.startswith("big")}
    assert big_workers == {2}, rows  # rank 1 advertises 1 cpu, rank 2 advertises 2
    recs = {r["id"]: r for r in _journal(mixed_run["out"])}
    assert all(recs[f"big{i}"]["worker"] == 2 for i in range(6))


def test_retry_then_success_and_permanent_failure(mixed_run):
    recs = {r["id"]: r for r in _journal(mixed_run["out"])}
    flaky = recs["flaky"]
    assert flaky["state"] == "succeeded" and flaky["attempts"] == 3
    assert [h["ok"] for h in flaky["history"]] == [False, False, True]
    assert [h["stderr_tail"].strip() for h in flaky["history"]] == ["try 1", "try 2", "try 3"]
    doomed = recs["doomed"]
    assert doomed["state"] == "failed" and doomed["attempts"] == 3  # first try + 2 retries
    assert [h["stderr_tail"].strip() for h in doomed["history"]] == ["boom-1", "boom-2", "boom-3"]
    assert all(h["rc"] == 7 for h in doomed["history"])
    # per-attempt logs are kept under --out
    assert (mixed_run["out"] / "tasks" / "doomed" / "attempt2.err").read_text().strip() == "boom-2"


def test_timeout_kills_the_task_and_its_children(mixed_run):
    recs = {r["id"]: r for r in _journal(mixed_run["out"])}
    hang = recs["hang"]
    assert hang["state"] == "failed" and hang["attempts"] == 1
    assert "timed out after 1 s" in hang["error"]
    child, shell = (int(x) for x in mixed_run["pidfile"].read_text().split())
    assert not _alive(child) and not _alive(shell)


# --- bad input ----------------------------------------------------------------------------------

def test_malformed_lines_rejected_before_anything_runs(tmp_path, farm_env):
    log = tmp_path / "marks.log"
    lines = [json.dumps({"id": "a", "fn": "farmhelpers:mark", "args": {"log": str(log), "tag": "a"}}),
             '{"id": "b", "cmd": ["true"]',
             json.dumps({"id": "c", "args": {}}),
             json.dumps({"id": "d", "fn": "farmhelpers:no_such"}),
             json.dumps({"id": "a", "cmd": ["true"]})]
    tf = tmp_path / "bad.jsonl"
    tf.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    p = _mpirun([tf, "--out", out], farm_env, timeout=60)
    assert p.returncode != 0
    err = p.stderr
    for frag in ("line 2: not valid JSON", "line 3: needs exactly one of 'cmd'", "line 4: fn 'farmhelpers:no_such'",
                 "line 5: duplicate id 'a' (first on line 1)"):
        assert frag in err, err
    assert err.count("4 bad task line(s)") == 1  # printed once, by rank 0
    assert not log.exists() and not (out / "journal.jsonl").exists()


# --- dead workers ---------------------------------------------------------------------------------

def _dead_worker_tasks(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    log, gate, marker = tmp_path / "marks.log", tmp_path / "gate", tmp_path / "killed.marker"
    tasks = [{"id": f"q{i}", "fn": "farmhelpers:mark", "args": {"log": str(log), "tag": f"q{i}"}} for i in range(6)]
    tasks.append({"id": "killer", "fn": "farmhelpers:kill_my_worker_once",
                  "args": {"log": str(log), "tag": "killer", "marker": str(marker)}})
    tasks += [{"id": f"g{i}", "fn": "farmhelpers:gated", "args": {"log": str(log), "tag": f"g{i}", "gate": str(gate)}}
              for i in range(4)]
    return _write_tasks(tmp_path / "tasks.jsonl", tasks), log, gate, marker


def test_dead_worker_rank_stops_the_job_fast_and_restart_resumes(tmp_path, farm_env):
    """Plain mpirun (OpenMPI 4.1): a rank killed by a signal makes mpirun abort every rank.
    The journal keeps what finished; the same command run again does only the rest."""
    tf, log, gate, marker = _dead_worker_tasks(tmp_path)
    out = tmp_path / "out"
    args = [tf, "--out", out, "--retries", "1", "--backoff", "0.05", "--no-progress"]
    p1 = _mpirun(args, farm_env, timeout=90)
    assert p1.returncode != 0
    assert marker.exists()
    assert "exited on signal 9" in p1.stderr or "signal 9" in p1.stderr, p1.stderr
    first = {r["id"] for r in _journal(out) if r["state"] == "succeeded"}
    assert first == {f"q{i}" for i in range(6)}  # the quick tasks finished; gated ones were waiting
    gate.touch()
    p2 = _mpirun(args, farm_env, timeout=90)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert "6 already done (journal)" in p2.stderr
    recs = _journal(out)
    final = {r["id"]: r["state"] for r in recs}
    assert set(final) == {f"q{i}" for i in range(6)} | {"killer"} | {f"g{i}" for i in range(4)}
    assert set(final.values()) == {"succeeded"}
    assert Counter(r["id"] for r in recs if r["state"] == "succeeded").most_common(1)[0][1] == 1
    assert all(n == 1 for n in _marks(log).values())  # nothing that finished ran twice


def test_dead_worker_rank_is_replaced_with_enable_recovery(tmp_path, farm_env):
    """mpirun --enable-recovery keeps the job alive after a rank dies; the dispatcher declares
    the silent worker lost after --heartbeat seconds and requeues its task."""
    tf, log, gate, marker = _dead_worker_tasks(tmp_path)
    gate.touch()
    out = tmp_path / "out"
    p = _mpirun([tf, "--out", out, "--retries", "1", "--backoff", "0.05", "--heartbeat", "2", "--no-progress"],
                farm_env, extra=("--enable-recovery",), timeout=90)
    # mpirun --enable-recovery exits 0 whatever the ranks return, so the summary is the oracle
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == 11 and summary["failed"] == 0
    recs = {r["id"]: r for r in _journal(out)}
    assert len(recs) == 11 and {r["state"] for r in recs.values()} == {"succeeded"}
    killer = recs["killer"]
    assert killer["attempts"] == 2 and "declared lost" in killer["history"][0]["error"]
    lost = json.loads((out / "summary.json").read_text())["lost_workers"]
    assert lost == [killer["history"][0]["worker"]]
    assert killer["worker"] != lost[0]
    assert all(n == 1 for n in _marks(log).values()) and len(_marks(log)) == 11


def test_sigterm_stops_cleanly_kills_task_groups_and_resumes(tmp_path, farm_env):
    """A requeue or Ctrl-C: mpirun forwards SIGTERM/SIGINT; the farm stops, kills running
    commands' process groups, keeps the journal, and the next run does only the rest."""
    pids = tmp_path / "pids"
    log = tmp_path / "marks.log"
    tasks = [{"id": f"q{i}", "fn": "farmhelpers:mark", "args": {"log": str(log), "tag": f"q{i}"}} for i in range(4)]
    tasks += [{"id": f"s{i}", "cmd": ["sh", "-c", f'sleep 60 & echo $! >> "{pids}"; wait']} for i in range(2)]
    tf = _write_tasks(tmp_path / "tasks.jsonl", tasks)
    out = tmp_path / "out"
    argv = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "3", sys.executable, "-m", "hpctrain", "farm",
            str(tf), "--out", str(out), "--no-progress", "--cpus-per-worker", "1"]
    proc = subprocess.Popen(argv, env=farm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.time() < deadline and proc.poll() is None, "the sleeping tasks never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert {r["id"] for r in _journal(out)} == {f"q{i}" for i in range(4)}
    time.sleep(0.2)
    assert not any(_alive(int(x)) for x in pids.read_text().split())
    # second run: the sleepers are made quick
    tasks = tasks[:4] + [{"id": f"s{i}", "cmd": ["sh", "-c", "true"]} for i in range(2)]
    _write_tasks(tf, tasks)
    p2 = _mpirun([tf, "--out", out, "--no-progress"], farm_env, timeout=90)
    assert p2.returncode == 0, p2.stderr
    assert "2 task(s) to run, 4 already done" in p2.stderr
    assert all(n == 1 for n in _marks(log).values())
