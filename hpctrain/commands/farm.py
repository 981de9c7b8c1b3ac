"""hpctrain farm TASKS.jsonl --out DIR"""

HELP = "run a list of independent tasks over MPI ranks, with retries, timeouts and a resumable journal"
DESCRIPTION = """Run the tasks of TASKS.jsonl (one JSON object per line) on every rank of an MPI
allocation: rank 0 dispatches, the other ranks are workers. Each line is either

  {"id": "a1", "cmd": ["python", "prep.py", "in/a1.csv"], "cpus": 2}
  {"id": "b7", "fn": "mypkg.jobs:convert", "args": {"path": "in/b7.csv"}, "mem_gb": 4}

Failed attempts are retried with exponential backoff; --timeout kills an attempt's whole
process group. End states go to DIR/journal.jsonl (fsynced); running the same command
again skips the tasks already done. Results: DIR/tasks/<id>/. Examples:

  hpctrain launch -n 5 -- hpctrain farm tasks.jsonl --out runs/farm1 --retries 2 --timeout 600
  mpirun --enable-recovery -np 9 hpctrain farm tasks.jsonl --out runs/farm1   # survive a dead rank
  hpctrain farm tasks.jsonl --out runs/farm1 --local-workers 2                # no MPI, one process

Exit codes: 0 all succeeded, 1 some task failed, 2 bad input, 130 interrupted.
See docs/farm.md.
"""


def add_arguments(p):
    p.add_argument("tasks", help="JSONL task file")
    p.add_argument("--out", required=True, help="results directory (journal, per-task results, summary)")
    p.add_argument("--retries", type=int, default=2, help="retries after a failed first attempt (default 2)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per attempt; the task's process group "
                                                               "is killed (default: none)")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in s, doubled per retry (default 1)")
    p.add_argument("--backoff-max", type=float, default=60.0, help="cap of the retry delay in s (default 60)")
    p.add_argument("--workers-per-node", type=int, default=None,
                   help="split each node's cpus/gpus/memory among K workers (default: worker ranks on the node)")
    p.add_argument("--cpus-per-worker", default=None, help="override: N, or N1,N2,... per worker in rank order")
    p.add_argument("--gpus-per-worker", default=None, help="override: N, or a comma list")
    p.add_argument("--mem-per-worker", default=None, help="override in GB: N, or a comma list")
    p.add_argument("--max-tasks-per-worker", type=int, default=32, help="cap on one worker's concurrent tasks")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="seconds of silence before a rank is declared lost (default 60)")
    p.add_argument("--kill-grace", type=float, default=2.0, help="seconds from SIGTERM to SIGKILL on timeout")
    p.add_argument("--skip-failed", action="store_true", help="on restart, skip tasks that already failed too")
    p.add_argument("--local-workers", type=int, default=1, help="worker threads when not started by mpirun/srun")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")


def run(args):
    from pathlib import Path

    from hpctrain.farm.driver import FarmConfig, run_farm

    cfg = FarmConfig(tasks=Path(args.tasks), out=Path(args.out), retries=args.retries, timeout=args.timeout,
                     backoff=args.backoff, backoff_max=args.backoff_max, workers_per_node=args.workers_per_node,
                     cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                     mem_per_worker=args.mem_per_worker, max_tasks_per_worker=args.max_tasks_per_worker,
                     heartbeat=args.heartbeat, kill_grace=args.kill_grace, skip_failed=args.skip_failed,
                     local_workers=args.local_workers, progress=not args.no_progress)
    report = run_farm(cfg)
    return 0 if report is None else report.exit_code()
