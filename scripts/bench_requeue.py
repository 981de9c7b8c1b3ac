"""Resume latency of a preempted job on the local Slurm cluster (scripts/local-cluster.sh start).

For N repetitions: submit the built-in counter, send `scancel --signal=USR2`, release the
requeued job with `scontrol update StartTime=now` as soon as it is pending, and read the
times back from the run's event log. Prints one line per phase (median of N, seconds).

    .venv/bin/python scripts/bench_requeue.py [-n 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpctrain.cli import main as cli
from hpctrain.slurm import journal
from hpctrain.slurm.environment import show_job


def one(base: Path, i: int) -> dict[str, float]:
    name = f"bench-{i}"
    assert cli(["submit", "--counter", "400", "--counter-step-s", "0.05", "--name", name, "--runs-dir", str(base),
                "--time", "10"]) == 0
    run = base / name
    job = journal.fold(journal.read_events(run)).job_id
    t0 = time.monotonic()
    while not (run / "checkpoints" / "counter.json").is_file():
        if time.monotonic() - t0 > 120:
            raise SystemExit("the job did not start within 120 s (is the cluster busy?)")
        time.sleep(0.1)
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    t_release = None
    while t_release is None:
        rec = show_job(job) or {}
        if rec.get("JobState") == "PENDING" and rec.get("Reason") == "BeginTime":
            # a restart in the second of the requeue fails with "Job credential revoked"
            time.sleep(3)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
            t_release = time.time()
        elif time.time() - t_signal > 120:
            raise SystemExit("the job was not requeued within 120 s")
        time.sleep(0.05)
    while len([e for e in journal.read_events(run) if e["event"] == "started"]) < 2:
        if time.time() - t_signal > 240:
            raise SystemExit("the requeued job did not restart within 240 s")
        time.sleep(0.05)
    subprocess.run(["scancel", job], timeout=30)
    ev = journal.read_events(run)
    requeue = next(e["time"] for e in ev if e["event"] == "requeue")
    restart = [e["time"] for e in ev if e["event"] == "started"][1]
    return {"signal -> checkpoint + requeue logged": requeue - t_signal,
            "requeue logged -> released (incl. a 3 s safety wait)": t_release - requeue,
            "release -> new attempt started": restart - t_release,
            "signal -> new attempt started": restart - t_signal}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3)
    args = p.parse_args()
    # the cancelled jobs may still be writing while the dir goes away: ignore that
    with tempfile.TemporaryDirectory(prefix="bench-requeue-", ignore_cleanup_errors=True) as tmp:
        runs = [one(Path(tmp), i) for i in range(args.n)]
    print(f"requeue resume latency, median of {args.n} (seconds; counter task, 1 rank, 0.05 s steps):")
    for key in runs[0]:
        print(f"  {key:50s} {statistics.median(r[key] for r in runs):6.2f}")
    print("  without the StartTime=now release Slurm holds a requeued job ~121 s (Reason=BeginTime)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
