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


# the fields that are positional or required; every other FarmConfig field is a generated flag
_OWN = ("tasks", "out")


def _flag_fields():
    import dataclasses

    from hpctrain.farm.driver import FarmConfig

    return tuple(f.name for f in dataclasses.fields(FarmConfig) if f.name not in _OWN)


def add_arguments(p):
    from hpctrain.config import add_flags
    from hpctrain.farm.driver import FarmConfig

    p.add_argument("tasks", help="JSONL task file")
    p.add_argument("--out", required=True, help="results directory (journal, per-task results, summary)")
    add_flags(p, FarmConfig, _flag_fields())


def run(args):
    from pathlib import Path

    from hpctrain.config import flag_values
    from hpctrain.farm.driver import FarmConfig, run_farm

    cfg = FarmConfig(tasks=Path(args.tasks), out=Path(args.out), **flag_values(FarmConfig, args, _flag_fields()))
    report = run_farm(cfg)
    return 0 if report is None else report.exit_code()
