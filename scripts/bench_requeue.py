"""Resume latency of a preempted job on the local Slurm cluster (scripts/local-cluster.sh start).

Two restarts, side by side, with nothing released by hand:

* ``resubmit`` (the default of ``hpctrain submit``): the batch script's after-step submits a
  new job for the same run dir;
* ``requeue`` (``--restart requeue``): rank 0 runs ``scontrol requeue``; Slurm holds the job
  (Reason=BeginTime) until its old launch credential has expired, and this script only
  watches it.

For each: submit the built-in counter, send ``scancel --signal=USR2``, read the times back
from the run's event log (and the hold from ``scontrol show job``). Prints one line per phase
(median of N, seconds).

    .venv/bin/python scripts/bench_requeue.py [-n 3] [--hold-runs 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from hpctrain.cli import main as cli
from hpctrain.slurm import journal
from hpctrain.slurm.environment import show_job

TARGET_S = 15.0


def _events(run: Path, name: str) -> list[dict]:
    return [e for e in journal.read_events(run) if e["event"] == name]


def _wait(pred, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = pred()
        if out:
            return out
        time.sleep(0.05)
    raise SystemExit(f"{what} did not happen within {timeout:.0f} s (is the cluster busy?)")


def _slurm_time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def one(base: Path, name: str, restart: str) -> dict[str, float]:
    if cli(["submit", "--counter", "400", "--counter-step-s", "0.05", "--name", name, "--runs-dir", str(base),
            "--time", "10", "--restart", restart]) != 0:
        raise SystemExit("hpctrain submit failed (see above)")
    run = base / name
    job = journal.fold(journal.read_events(run)).job_id
    _wait(lambda: (run / "checkpoints" / "counter.json").is_file(), 120, "the job's start")
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    out: dict[str, float] = {}
    hold = None
    if restart == "requeue":
        # only watched: the hold Slurm sets once the old attempt has ended
        def held():
            rec = show_job(job) or {}
            return rec if rec.get("JobState") == "PENDING" and rec.get("Reason") == "BeginTime" else None
        rec = _wait(held, 120, "the requeue")
        hold = _slurm_time(rec["EligibleTime"])
    _wait(lambda: len(_events(run, "started")) >= 2, 300, "the next attempt's start")
    subprocess.run(["scancel", job, journal.fold(journal.read_events(run)).job_id], timeout=30, capture_output=True)
    requeue = _events(run, "requeue")[0]["time"]
    restart_t = _events(run, "started")[1]["time"]
    out["signal -> checkpoint + requeue logged"] = requeue - t_signal
    if hold is not None:
        out["requeue logged -> Slurm's EligibleTime (the hold)"] = hold - requeue
    else:
        out["requeue logged -> next job submitted"] = _events(run, "resubmitted")[0]["time"] - requeue
    out["signal -> next attempt started"] = restart_t - t_signal
    return out


def report(title: str, runs: list[dict[str, float]]) -> float:
    print(f"{title} (median of {len(runs)}, seconds):")
    for key in runs[0]:
        print(f"  {key:52s} {statistics.median(r[key] for r in runs):7.2f}")
    return statistics.median(r["signal -> next attempt started"] for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3, help="repetitions of the default (resubmit) restart")
    p.add_argument("--hold-runs", type=int, default=1, help="repetitions of the held requeue (~2 min each)")
    args = p.parse_args()
    # the cancelled jobs may still be writing while the dir goes away: ignore that
    with tempfile.TemporaryDirectory(prefix="bench-requeue-", ignore_cleanup_errors=True) as tmp:
        fast = [one(Path(tmp), f"resubmit-{i}", "resubmit") for i in range(args.n)]
        held = [one(Path(tmp), f"requeue-{i}", "requeue") for i in range(args.hold_runs)]
    print("requeue resume latency; counter task, 1 rank, 0.05 s steps; nothing released by hand")
    a = report("restart 'resubmit' (default)", fast)
    b = report("restart 'requeue' (same job id, Slurm's hold left alone)", held) if held else None
    verdict = "meets" if a <= TARGET_S else "MISSES"
    print(f"signal -> running: {a:.1f} s with resubmit ({verdict} the {TARGET_S:.0f} s target)"
          + (f", {b:.1f} s with requeue ({b / a:.1f}x)" if b is not None else ""))
    return 0 if a <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
