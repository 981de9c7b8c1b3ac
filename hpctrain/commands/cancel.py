"""hpctrain cancel RUN"""

HELP = "cancel a run's Slurm job (or a sweep's array and retries)"


def add_arguments(p):
    p.add_argument("run", help="run dir or run name")
    p.add_argument("--runs-dir", help="where runs live (default: $HPCTRAIN_RUNS or runs)")


def run(args):
    from pathlib import Path

    from hpctrain.slurm.status import cancel_run, default_base, resolve_run

    base = Path(args.runs_dir) if args.runs_dir else default_base()
    run_dir = resolve_run(args.run, base)
    ids = cancel_run(run_dir)
    print(f"cancelled {run_dir.name}: scancel {' '.join(ids) if ids else '(no Slurm job)'}")
    return 0
