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
    import time

    from hpctrain.errors import ConfigError
    from hpctrain.rundir import RunDir
    from hpctrain.slurm.status import RunNotFound, rank_log, resolve_run, run_status, runs_base

    if args.lines < 0:
        raise ConfigError(f"-n/--lines must be >= 0 (the last N lines; 0 shows the whole log), got {args.lines}")
    run_dir = resolve_run(args.run, runs_base(args.runs_dir))
    path = RunDir(run_dir).batch_log if args.batch else rank_log(run_dir, args.rank)
    if not path.is_file():
        have = sorted(p.name for p in RunDir(run_dir).logs.glob("*.log"))
        raise RunNotFound(f"{str(path)!r} does not exist (yet); logs in this run: {', '.join(have) or 'none'}. "
                          "A pending job has no log until it starts")
    with open(path, "rb") as f:
        data = f.read()
        text = data.decode("utf-8", "replace")
        if args.lines:
            text = "\n".join(text.splitlines()[-args.lines:]) + ("\n" if text else "")
        sys.stdout.write(text)
        sys.stdout.flush()
        if not args.follow:
            return 0
        last_check = 0.0
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
                continue
            now = time.monotonic()
            if now - last_check > 5:
                last_check = now
                if run_status(run_dir, tail=0).state in ("COMPLETED", "FAILED", "CANCELLED"):
                    sys.stdout.write(f.read().decode("utf-8", "replace"))
                    return 0
            time.sleep(0.5)
