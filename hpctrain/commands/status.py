"""hpctrain status [RUN]"""

HELP = "state of a run (or of all runs): requeues, retries, last step and metric; never needs sacct"
DESCRIPTION = """Show PENDING / RUNNING / REQUEUED / COMPLETED / FAILED / CANCELLED for RUN (a run dir or
a name under $HPCTRAIN_RUNS, default runs/), the number of requeues and retries so far, the
last step and metric, and for a FAILED run the tail of the failing rank's log. Without RUN,
one line per run. The state comes from the run dir's event log and 'scontrol show job'."""


def add_arguments(p):
    p.add_argument("run", nargs="?", help="run dir or run name")
    p.add_argument("--runs-dir", help="where runs live (default: $HPCTRAIN_RUNS or runs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-live", action="store_true", help="do not ask slurmctld (run dir only)")
    p.add_argument("--lines", type=int, default=20, help="log lines shown for a FAILED run")


def run(args):
    import json
    from collections import Counter
    from pathlib import Path

    from hpctrain.slurm.status import default_base, format_status, format_table, list_runs, resolve_run, run_status
    from hpctrain.slurm.sweep import format_sweep, is_sweep_dir, sweep_rows

    base = Path(args.runs_dir) if args.runs_dir else default_base()
    if args.run:
        run_dir = resolve_run(args.run, base)
        if is_sweep_dir(run_dir):
            rows = sweep_rows(run_dir, live=not args.no_live)
            print(json.dumps(rows, indent=2, default=str) if args.json else format_sweep(run_dir, rows))
            return 0
        s = run_status(run_dir, live=not args.no_live, tail=args.lines)
        print(json.dumps(s.as_dict(), indent=2, default=str) if args.json else format_status(s))
        return 1 if s.state == "FAILED" else 0
    dirs = list_runs(base)
    rows = [run_status(d, live=not args.no_live, tail=0) for d in dirs if not is_sweep_dir(d)]
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
        return 0
    if rows:
        print(format_table(rows))
    for d in dirs:  # a sweep is one line here; 'hpctrain status SWEEP' prints its table
        if is_sweep_dir(d):
            counts = Counter(r["state"] for r in sweep_rows(d, live=not args.no_live))
            print(f"sweep {d.name}: {sum(counts.values())} trials: " +
                  ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if not dirs:
        print(f"no runs under {str(base)!r}")
    return 0
