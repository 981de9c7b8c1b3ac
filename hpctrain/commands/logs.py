"""hpctrain logs RUN [--rank R] [-f]"""

HELP = "print (or follow) a run's per-rank log"
DESCRIPTION = """Print the log of one rank of RUN (logs/rank-R.log in the run dir; requeues and
retries append to it). -f follows it until the run reaches a final state (Ctrl-C stops)."""


def add_arguments(p):
    p.add_argument("run", help="run dir or run name")
    p.add_argument("--rank", type=int, default=0, help="rank whose log to show (default 0)")
    p.add_argument("--batch", action="store_true", help="show the batch script's log instead")
    p.add_argument("-n", "--lines", type=int, default=0, help="only the last N lines (default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines while the run is live")
    p.add_argument("--runs-dir", help="where runs live (default: $HPCTRAIN_RUNS or runs)")


def run(args):
    import sys

    from hpctrain.slurm.logs import show_log
    from hpctrain.slurm.status import resolve_run, runs_base

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run_dir = resolve_run(args.run, runs_base(args.runs_dir))
    return show_log(run_dir, rank=args.rank, batch=args.batch, lines=args.lines, follow=args.follow, write=write)
