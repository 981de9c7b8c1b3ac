"""hpctrain cancel RUN"""

HELP = "cancel a run's Slurm job (or a sweep's array and retries)"
DESCRIPTION = """Cancel RUN's Slurm job (scancel) and record the cancel in its event log, so that
'hpctrain status' shows CANCELLED. For a sweep, its arrays and the trials' retries.

A run that has already ended (COMPLETED, FAILED or CANCELLED in its log; for a sweep, all its
trials) is left unchanged: 'already ended' is printed and the exit code is 0.
Exit codes: 0 cancelled or already ended, 2 bad input (no such run, no job to cancel)."""


def add_arguments(p):
    p.add_argument("run", help="run dir or run name")
    p.add_argument("--runs-dir", help="where runs live (default: $HPCTRAIN_RUNS or runs)")


def run(args):
    from hpctrain.slurm.status import RunEnded, cancel_run, resolve_run, runs_base

    run_dir = resolve_run(args.run, runs_base(args.runs_dir))
    try:
        ids = cancel_run(run_dir)
    except RunEnded as e:
        print(str(e))
        return 0
    print(f"cancelled {run_dir.name}: scancel {' '.join(ids) if ids else '(no Slurm job)'}")
    return 0
