"""Resource monitoring: the alert rules (pure), the config section, the NVML probe's "no GPU"
path, the sampler inside a real training run (a slow loader raises the input-bound alert), the
report, 'hpctrain status' and 'hpctrain monitor -f' on a run that is still writing."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from hpctrain.monitor import alerts as A
from hpctrain.train.config import MonitorConfig

REPO = Path(__file__).resolve().parents[1]


def sample(t=0.0, steps=10, step_s=0.010, wait=0.001, exchange=0.002, h2d=0.0, rss=100.0, gpu=None, step=0):
    return {"kind": "sample", "time": t, "step": step, "steps": steps, "step_s": step_s, "data_wait_s": wait,
            "exchange_s": exchange, "h2d_s": h2d, "rss_mb": rss, "cpu_pct": 50.0, "gpu": gpu}


# ------------------------------------------------------------------------------ alert rules (pure)
def test_input_bound_fires_above_the_threshold_with_the_facts_and_advice():
    cfg = MonitorConfig()
    al = A.input_bound([sample(wait=0.004, step_s=0.010)] * 2, cfg, rank=3, node="n7")
    assert al is not None and al.kind == A.INPUT_BOUND and al.rank == 3 and al.node == "n7"
    assert al.facts["data_wait_share"] == pytest.approx(0.4)
    assert "rank 3 on n7" in al.message and "40%" in al.message and "data.prefetch" in al.message
    assert A.input_bound([sample(wait=0.003, step_s=0.010)], cfg) is None  # 30% is not above 30%


def test_input_bound_weights_windows_by_steps_and_needs_min_steps():
    cfg = MonitorConfig(min_steps=5)
    # 1 step with 90% wait and 9 steps with 10%: 18% overall, not input-bound
    assert A.input_bound([sample(steps=1, wait=0.009), sample(steps=9, wait=0.001)], cfg) is None
    assert A.input_bound([sample(steps=4, wait=0.009)], cfg) is None  # too few steps to judge
    assert A.input_bound([sample(steps=0, step_s=None, wait=None)], cfg) is None
    t = A.window_timings([sample(steps=1, wait=0.009), sample(steps=9, wait=0.001)])
    assert t["data_wait_s"] == pytest.approx((0.009 + 9 * 0.001) / 10)


def test_straggler_names_the_slow_rank_and_its_node():
    cfg = MonitorConfig()
    got = A.stragglers([0.010, 0.011, 0.030, 0.010], ["a", "a", "b", "c"], cfg)
    assert [(a.rank, a.node) for a in got] == [(2, "b")]
    assert "rank 2 on b" in got[0].message and got[0].facts["ratio"] == pytest.approx(3.0)
    assert A.stragglers([0.010, 0.014, 0.012, 0.013], ["a"] * 4, cfg) == []


def test_straggler_with_two_ranks_uses_the_faster_as_median():
    cfg = MonitorConfig()
    assert [a.rank for a in A.stragglers([0.010, 0.020], ["a", "b"], cfg)] == [1]
    assert A.stragglers([0.010, 0.014], ["a", "b"], cfg) == []
    # ranks without steps, or too few of them, are left out; one rank alone is nobody's straggler
    assert A.stragglers([None, 0.020], ["a", "b"], cfg) == []
    assert A.stragglers([0.010, 0.050], ["a", "b"], cfg, steps=[10, 2]) == []


def test_gpu_memory_alert():
    cfg = MonitorConfig()
    hot = sample(gpu={"mem_used_mb": 960.0, "mem_total_mb": 1000.0, "util_pct": 99})
    al = A.gpu_memory(hot, cfg, rank=0)
    assert al is not None and al.facts["used_fraction"] == pytest.approx(0.96) and "96.0%" in al.message
    assert A.gpu_memory(sample(gpu={"mem_used_mb": 940.0, "mem_total_mb": 1000.0}), cfg) is None
    assert A.gpu_memory(sample(gpu=None), cfg) is None


def test_slope_and_r_match_numpy():
    rng = np.random.default_rng(0)
    x = np.arange(20, dtype=float)
    y = 3.0 * x + rng.normal(0, 2, 20)
    slope, r = A.slope_and_r(list(x), list(y))
    assert slope == pytest.approx(np.polyfit(x, y, 1)[0])
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert A.slope_and_r([1.0, 1.0], [2.0, 3.0]) == (0.0, 0.0)


def test_rss_leak_needs_steady_growth_over_the_window():
    cfg = MonitorConfig(leak_window=10, leak_min_mb=50.0, leak_min_r=0.9)
    steady = [sample(t=5.0 * i, rss=1000.0 + 10.0 * i) for i in range(10)]  # +90 MB in 45 s
    al = A.rss_leak(steady, cfg, rank=1, node="n1")
    assert al is not None and al.facts["mb_per_min"] == pytest.approx(120.0) and "rank 1" in al.message
    assert A.rss_leak(steady[:9], cfg) is None  # the window is not full yet
    slow = [sample(t=5.0 * i, rss=1000.0 + 1.0 * i) for i in range(10)]
    assert A.rss_leak(slow, cfg) is None  # steady but small
    jump = [sample(t=5.0 * i, rss=1000.0 + (200.0 if i == 9 else 0.0)) for i in range(10)]
    assert A.rss_leak(jump, cfg) is None  # one jump, not a climb (r about 0.5)


def test_farm_idle_only_when_nothing_waiting_fits():
    def fits(need, free):
        return need <= free

    got = A.farm_idle({0: 1, 1: 4}, [2, 3], fits)
    assert [a.rank for a in got] == [0] and "worker 0 is idle" in got[0].message
    assert A.farm_idle({0: 1}, [], fits) == []


def test_cooldown_holds_back_repeats_per_kind_and_rank():
    c = A.Cooldown(60.0)
    a0 = A.Alert(A.INPUT_BOUND, 0, None, "m")
    assert c.admit(a0, 0.0) and not c.admit(a0, 30.0)
    assert c.admit(A.Alert(A.INPUT_BOUND, 1, None, "m"), 30.0)
    assert c.admit(A.Alert(A.RSS_LEAK, 0, None, "m"), 30.0)
    assert c.admit(a0, 61.0)


def test_alert_record_round_trip():
    a = A.Alert(A.STRAGGLER, 1, "n2", "msg", {"ratio": 2.0})
    assert A.Alert.from_record(json.loads(json.dumps(a.as_record()))) == a


# ------------------------------------------------------------------------------ config
def test_unknown_monitor_key_is_an_error_naming_the_valid_ones():
    from hpctrain.errors import ConfigError
    from hpctrain.train.config import load_config

    with pytest.raises(ConfigError, match=r"unknown key 'monitor.intervall_s'.*interval_s"):
        load_config({"data": {"dir": "x"}, "monitor": {"intervall_s": 1}})


@pytest.mark.parametrize("key,value,match", [
    ("interval_s", 0, "monitor.interval_s"), ("interval_s", 0.001, "at least 0.05"),
    ("straggler_factor", 1.0, "monitor.straggler_factor"), ("input_bound_fraction", 0, "input_bound_fraction"),
    ("leak_window", 2, "leak_window"), ("hook", ["ok", ""], "monitor.hook"), ("gather_every_steps", 0, "gather"),
])
def test_bad_monitor_values_are_errors(key, value, match):
    from hpctrain.errors import ConfigError
    from hpctrain.train.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config({"data": {"dir": "x"}, "monitor": {key: value}})


def test_timeline_needs_horovod():
    from hpctrain.errors import ConfigError
    from hpctrain.train.config import load_config

    with pytest.raises(ConfigError, match="comm.timeline.*horovod"):
        load_config({"data": {"dir": "x"}, "comm": {"backend": "mpi", "timeline": True}})
    assert load_config({"data": {"dir": "x"}, "comm": {"timeline": True}}).comm.timeline


# ------------------------------------------------------------------------------ probes
def test_nvml_index_follows_cuda_visible_devices():
    from hpctrain.monitor.probes import nvml_index

    assert nvml_index(1, {"CUDA_VISIBLE_DEVICES": "3,5"}) == 5
    assert nvml_index(1, {}) == 1
    assert nvml_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-1234"}) == 0  # a UUID: no number to map through


def test_no_nvml_package_degrades_to_no_gpu(monkeypatch):
    from hpctrain.monitor.probes import GpuProbe

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    probe, note = GpuProbe.open(0)
    assert probe is None and note.startswith("no GPU") and "hpctrain[gpu]" in note


def test_nvml_without_a_driver_degrades_to_no_gpu_in_the_samples(monkeypatch, tmp_path):
    from hpctrain.monitor.sampler import RankMonitor

    class NVMLError(Exception):
        pass

    def init():
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=init))
    mon = RankMonitor(MonitorConfig(interval_s=60), tmp_path, rank=0, node="n", cuda_index=0)
    mon.start()
    mon.add_step(1, 0.01, 0.001, 0.002, 0.0)
    mon.close()
    recs = [json.loads(x) for x in (tmp_path / "monitor" / "rank-0.jsonl").read_text().splitlines()]
    assert recs[0]["kind"] == "start" and recs[0]["gpu"] == "no GPU: NVML cannot start (Driver Not Loaded)"
    got = [r for r in recs if r["kind"] == "sample"]
    assert got and got[-1]["gpu"] is None and got[-1]["steps"] == 1 and got[-1]["rss_mb"] > 0
    assert recs[-1]["kind"] == "end"


@pytest.mark.gpu
def test_nvml_reads_the_gpu():
    pytest.importorskip("pynvml")
    from hpctrain.monitor.probes import GpuProbe

    probe, name = GpuProbe.open(0)
    assert probe is not None, name
    try:
        got = probe.read()
    finally:
        probe.close()
    assert got["mem_total_mb"] > 0 and 0 <= got["mem_used_mb"] <= got["mem_total_mb"]
    assert 0 <= got["util_pct"] <= 100
    assert got["temp_c"] is None or got["temp_c"] > 0


# ------------------------------------------------------------------------------ the report
def test_summary_shares_and_means_are_step_weighted():
    from hpctrain.monitor.report import summarize

    recs = [{"kind": "start", "node": "n1", "gpu": "no GPU: x"},
            sample(steps=1, step_s=0.020, wait=0.010, exchange=0.0),
            sample(steps=3, step_s=0.010, wait=0.0, exchange=0.002),
            sample(steps=0, step_s=None, wait=None, exchange=None)]
    s = summarize(0, recs)
    assert s.steps == 4 and s.samples == 3 and s.node == "n1"
    assert s.mean["step_s"] == pytest.approx(0.0125) and s.peak["step_s"] == pytest.approx(0.020)
    assert s.share["data_wait"] == pytest.approx(0.0025 / 0.0125)
    assert s.share["exchange"] == pytest.approx(0.0015 / 0.0125)
    assert sum(s.share.values()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ in a training run
def _records(run_dir: Path, rank: int = 0) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "monitor" / f"rank-{rank}.jsonl").read_text().splitlines()]


def test_slow_loader_raises_input_bound_with_journal_hook_and_status(tmp_path, monkeypatch):
    from monitor_helpers import SlowLoader
    from test_train import blobs_shards, make_cfg

    import hpctrain.train.data as D
    from hpctrain.slurm import journal
    from hpctrain.slurm.status import format_status, run_status
    from hpctrain.train.trainer import train

    data = blobs_shards(tmp_path, train=160, val=32)
    real = D.make_train_loader
    monkeypatch.setattr(D, "make_train_loader", lambda *a, **k: SlowLoader(real(*a, **k), 0.02))
    run_dir = tmp_path / "run"
    journal.record(run_dir, "submitted", job_id="local-1")  # a submitted run: alerts go to its journal too
    seen = tmp_path / "hook.json"
    hook = [sys.executable, "-c", f"import os; open({str(seen)!r}, 'w').write(os.environ['HPCTRAIN_ALERT'])"]
    cfg = make_cfg(data, run_dir, run={"epochs": 1}, checkpoint={"every_steps": 0},
                   monitor={"interval_s": 0.1, "gather_every_steps": 4, "hook": hook})
    res = train(cfg)
    assert res.status == "completed"
    recs = _records(run_dir)
    alerts = [r for r in recs if r["kind"] == "alert"]
    assert alerts and {a["alert"] for a in alerts} == {"input_bound"}, alerts
    assert alerts[0]["rank"] == 0 and alerts[0]["facts"]["data_wait_share"] > 0.3
    assert "data.prefetch" in alerts[0]["message"]
    assert sum(r.get("steps") or 0 for r in recs if r["kind"] == "sample") == res.step
    events = [e for e in journal.read_events(run_dir) if e["event"] == "alert"]
    assert [e["alert"] for e in events] == ["input_bound"] and events[0]["rank"] == 0
    deadline = time.monotonic() + 60
    while not seen.is_file() and time.monotonic() < deadline:  # the hook runs in the background
        time.sleep(0.1)
    assert json.loads(seen.read_text())["alert"] == "input_bound"
    text = format_status(run_status(run_dir, live=False))
    assert "monitor    rank 0  step" in text and "ALERT input_bound" in text


def test_plain_run_writes_samples_not_a_journal_and_monitor_reports(tmp_path):
    from test_train import blobs_shards, make_cfg

    from hpctrain.cli import main
    from hpctrain.rundir import RunDir
    from hpctrain.train.trainer import train

    data = blobs_shards(tmp_path, train=96, val=32)
    run_dir = tmp_path / "run"
    train(make_cfg(data, run_dir, run={"epochs": 2}, monitor={"interval_s": 0.05}))
    assert not RunDir(run_dir).events.exists()  # a plain run stays a plain run for 'hpctrain status'
    recs = _records(run_dir)
    assert recs[0]["kind"] == "start" and recs[0]["gpu"].startswith("no GPU") and recs[-1]["kind"] == "end"
    assert main(["monitor", str(run_dir), "--out", str(tmp_path / "png")]) == 0
    png = tmp_path / "png" / "rank-0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_monitor_disabled_writes_nothing(tmp_path):
    from test_train import blobs_shards, make_cfg

    from hpctrain.cli import main
    from hpctrain.train.trainer import train

    data = blobs_shards(tmp_path, train=64, val=32)
    run_dir = tmp_path / "run"
    train(make_cfg(data, run_dir, run={"epochs": 1}, monitor={"enabled": False}))
    assert not (run_dir / "monitor").exists()
    assert main(["monitor", str(run_dir)]) == 2  # one line: no samples, how to turn them on


def test_monitor_follow_shows_samples_of_a_run_still_writing(tmp_path):
    from hpctrain.monitor.sampler import RankMonitor
    from hpctrain.rundir import RunDir

    run_dir = tmp_path / "run"
    mon = RankMonitor(MonitorConfig(interval_s=0.05), run_dir, rank=0, node="n0")
    mon.start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "hpctrain", "monitor", str(run_dir), "-f", "--poll", "0.05",
                          "--timeout", "120", "--no-plots"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True).start()
    try:
        assert "following" in lines.get(timeout=60)
        step, seen = 0, []
        deadline = time.monotonic() + 90
        # steps added only after the follower started: each one it prints was written while it ran
        while not any("step 20 " in x for x in seen) and time.monotonic() < deadline:
            if step < 20:
                step += 1
                mon.add_step(step, 0.01, 0.001, 0.002, 0.0)
            try:
                seen.append(lines.get(timeout=0.05))
            except queue.Empty:
                pass
        assert any("step 20 " in x for x in seen), seen
        assert any(x.startswith("rank 0  step") and "ms/step" in x for x in seen)
        RunDir(run_dir).write_result({"status": "completed", "step": 20})
        assert p.wait(timeout=60) == 0
    finally:
        mon.close()
        if p.poll() is None:
            p.kill()


@pytest.mark.launcher
def test_timeline_under_two_ranks_and_both_ranks_sample(tmp_path, mpi_env):
    from slurm_helpers import make_blobs
    from launch_helpers import HPCTRAIN, mpirun, without_mpi_vars

    data = make_blobs(tmp_path / "blobs", train=128, val=32)
    run_dir = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""\
run: {{name: tl, dir: '{run_dir}', epochs: 1}}
data: {{dir: '{data}', batch_size: 16}}
model: {{kind: mlp, hidden: [8]}}
logging: {{progress: false, plots: false}}
comm: {{backend: horovod, timeline: true}}
monitor: {{interval_s: 0.2}}
""")
    p = subprocess.run(mpirun(2, [*HPCTRAIN, "train", str(cfg)]), capture_output=True, text=True, timeout=300,
                       env=without_mpi_vars(mpi_env))
    assert p.returncode == 0, p.stdout + p.stderr
    events = json.loads((run_dir / "monitor" / "timeline.json").read_text())  # valid JSON once stopped
    names = {str(e.get("name", "")) for e in events}
    assert "NEGOTIATE_ALLREDUCE" in names and any(n.startswith("allreduce.") for n in
                                                   (str((e.get("args") or {}).get("name", "")) for e in events))
    for rank in (0, 1):
        recs = _records(run_dir, rank)
        assert recs[0]["rank"] == rank and sum(r.get("steps") or 0 for r in recs if r["kind"] == "sample") == 4


def test_farm_alerts_on_a_worker_idle_while_tasks_wait_that_it_cannot_hold(tmp_path, capsys):
    from hpctrain.cli import main

    # worker 1 has 1 cpu, worker 2 has 2; every task needs 2, so worker 1 idles while they queue
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"s{i}", "cmd": ["sleep", "0.5"], "cpus": 2}) + "\n"
                             for i in range(3)))
    out = tmp_path / "out"
    assert main(["farm", str(tasks), "--out", str(out), "--local-workers", "2", "--cpus-per-worker", "1,2",
                 "--no-progress"]) == 0
    recs = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    assert [(r["alert"], r["rank"]) for r in recs] == [("farm_idle", 1)]  # once: the cooldown holds repeats
    assert "cpus=2" in recs[0]["message"]
    assert "farm: warning: worker 1 is idle (cpus=1" in capsys.readouterr().err


def test_farm_scheduler_reports_idle_workers_and_waiting_needs(tmp_path):
    from hpctrain.farm.scheduler import Resources, Scheduler
    from hpctrain.farm.tasks import parse_tasks

    tf = tmp_path / "t.jsonl"
    tf.write_text(json.dumps({"id": "a", "cmd": ["true"], "cpus": 2}) + "\n" +
                  json.dumps({"id": "b", "cmd": ["true"], "cpus": 1}) + "\n")
    sched = Scheduler(parse_tasks(tf), retries=0)
    sched.add_worker(1, Resources(1, 0, 0.0), max_tasks=1)
    sched.add_worker(2, Resources(2, 0, 0.0), max_tasks=1)
    assert [a.task.id for a in sched.assign(2, 0.0)] == ["a"]
    idle, shapes = sched.idle_while_waiting()
    assert idle == {1: Resources(1, 0, 0.0)} and shapes == [Resources(1, 0, 0.0)]
    assert A.farm_idle(idle, shapes, lambda n, f: n.fits_in(f)) == []  # "b" fits worker 1: no alert


def test_hook_runs_without_a_shell_and_a_failing_hook_is_a_warning(tmp_path):
    from hpctrain.monitor.sampler import run_hook

    warned: list[str] = []
    out = tmp_path / "argv.json"
    # an argument with shell syntax arrives as one literal argv entry
    t = run_hook([sys.executable, "-c", f"import json, sys; json.dump(sys.argv[1:], open({str(out)!r}, 'w'))",
                  "$(touch x); y"], {"alert": "input_bound"}, 60, warned.append)
    t.join(60)
    assert json.loads(out.read_text()) == ["$(touch x); y"] and warned == []
    run_hook([str(tmp_path / "missing")], {"alert": "x"}, 60, warned.append).join(60)
    run_hook([sys.executable, "-c", "import sys; sys.exit('bad luck')"], {"alert": "x"}, 60, warned.append).join(60)
    assert len(warned) == 2 and "not found" in warned[0] and "exited 1: bad luck" in warned[1]
