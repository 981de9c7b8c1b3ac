"""hpctrain status [RUN]"""

HELP = "state of a run (or of all runs): requeues, retries, last step and metric; never needs sacct"
DESCRIPTION = """Show PENDING / RUNNING / REQUEUED / COMPLETED / FAILED / CANCELLED for RUN (a run dir or
a name under $HPCTRAIN_RUNS, default runs/), the number of requeues and retries so far, the
last step and metric, and for a FAILED run the tail of the failing rank's log. Without RUN,
one line per run. The state comes from the run dir's event log and 'scontrol show job'.

With --wait, block until RUN has really finished (a requeued or retried run has not) and
print one line per state change. Exit 0 when it COMPLETED, 1 when it ended otherwise
(FAILED, CANCELLED), 2 for bad input, 124 when --wait-timeout passed first, 130 on Ctrl-C;
waiting never cancels the job.

  hpctrain status RUN --wait --wait-timeout 3600 --poll 10"""


def add_arguments(p):
    p.add_argument("run", nargs="?", help="run dir or run name")
    p.add_argument("--runs-dir", help="where runs live (default: $HPCTRAIN_RUNS or runs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-live", action="store_true", help="do not ask slurmctld (run dir only)")
    p.add_argument("--lines", type=int, default=20, help="log lines shown for a FAILED run")
    add_wait_arguments(p)


def add_wait_arguments(p):
    from hpctrain.slurm.wait import DEFAULT_POLL_S

    w = p.add_argument_group("waiting (exit 0 completed, 1 failed/cancelled, 124 --wait-timeout, 130 Ctrl-C)")
    w.add_argument("--wait", action="store_true",
                   help="block until the run is COMPLETED, FAILED or CANCELLED (requeues and retries are waited "
                        "through), printing each state change")
    w.add_argument("--wait-timeout", type=float, metavar="SECONDS",
                   help="stop waiting after this long (exit 124); the job is not cancelled (default: no limit)")
    w.add_argument("--poll", type=float, metavar="SECONDS", help=f"seconds between checks (default {DEFAULT_POLL_S:g})")


def run(args):
    import json
    import sys
    from collections import Counter

    from hpctrain.errors import ConfigError, HpctrainError
    from hpctrain.slurm.status import (damaged_records, format_status, format_table, list_runs, resolve_run,
                                       run_status, runs_base, wait_run)
    from hpctrain.slurm.sweep import format_sweep, is_sweep_dir, sweep_rows
    from hpctrain.slurm.wait import check_wait_options

    def warn(run_dir) -> None:
        for w in damaged_records(run_dir):
            print(f"hpctrain status: warning: {w}", file=sys.stderr)

    poll_s = check_wait_options(wait=args.wait, poll_s=args.poll, timeout_s=args.wait_timeout)
    if args.lines < 0:
        raise ConfigError(f"--lines must be >= 0 (log lines shown for a FAILED run), got {args.lines}")
    if args.wait and not args.run:
        raise ConfigError("--wait follows one run and none was given: 'hpctrain status RUN --wait'")
    clash = [o for o, on in (("--json", args.json), ("--no-live", args.no_live)) if on]
    if args.wait and clash:
        # the wait prints state changes as lines and needs slurmctld's view to see a job end
        raise ConfigError(f"--wait does not combine with {' or '.join(clash)}; drop it, and read the final "
                          "state afterwards with 'hpctrain status RUN --json'")
    base = runs_base(args.runs_dir)
    if args.run:
        run_dir = resolve_run(args.run, base)
        warn(run_dir)
        if args.wait:
            if is_sweep_dir(run_dir):
                raise ConfigError(f"{str(run_dir)!r} is a sweep; --wait follows one run. Run the same 'hpctrain "
                                  "sweep' command again to wait on the whole sweep, or wait on one trial with "
                                  "'hpctrain status SWEEP/trials/trial-I --wait'")
            return wait_run(run_dir, poll_s=poll_s, timeout_s=args.wait_timeout)
        if is_sweep_dir(run_dir):
            rows = sweep_rows(run_dir, live=not args.no_live)
            print(json.dumps(rows, indent=2, default=str) if args.json else format_sweep(run_dir, rows))
            return 0
        s = run_status(run_dir, live=not args.no_live, tail=args.lines)
        print(json.dumps(s.as_dict(), indent=2, default=str) if args.json else format_status(s))
        return 1 if s.state == "FAILED" else 0
    dirs = list_runs(base)
    for d in dirs:
        warn(d)
    rows = [run_status(d, live=not args.no_live, tail=0) for d in dirs if not is_sweep_dir(d)]
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
        return 0
    if rows:
        print(format_table(rows))
    for d in dirs:  # a sweep is one line here; 'hpctrain status SWEEP' prints its table
        if is_sweep_dir(d):
            try:
                counts = Counter(r["state"] for r in sweep_rows(d, live=not args.no_live))
            except HpctrainError as e:  # one damaged sweep must not hide the other runs
                print(f"hpctrain status: warning: sweep {d.name}: {e}", file=sys.stderr)
                continue
            print(f"sweep {d.name}: {sum(counts.values())} trials: " +
                  ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if not dirs:
        print(f"no runs under {str(base)!r}")
    return 0
