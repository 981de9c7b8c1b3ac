"""hpctrain monitor RUN [-f]"""

HELP = "per-rank resource use of a training run: summary table, PNG timelines, alerts; -f follows it live"
DESCRIPTION = """Read the samples every rank of RUN wrote (RUN/monitor/rank-R.jsonl, see docs/monitor.md)
and print one row per rank: mean/max step time, data wait, exchange, CPU, RSS and GPU, and the
share of step time spent computing, waiting on data and exchanging gradients. Then the alerts
raised (input-bound, straggler, GPU memory, host memory leak), and the PNG timelines written,
one per rank (default RUN/monitor/plots/).

With -f, print each new sample and alert as the ranks write them, until the run's result.json
(or, for a submitted run, its journal) says it has finished; Ctrl-C stops (exit 130),
--timeout stops after that many seconds (exit 124). Works on a run under Slurm too: the run
dir is on the shared file system.

  hpctrain monitor runs/demo
  hpctrain monitor runs/demo -f --poll 2"""


def add_arguments(p):
    p.add_argument("run", help="run dir or run name")
    p.add_argument("--runs-dir", help="where runs live (default: $HPCTRAIN_RUNS or runs)")
    p.add_argument("-f", "--follow", action="store_true", help="print new samples and alerts while the run goes on")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="-f: seconds between reads (default 1)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="-f: stop after this long (exit 124)")
    p.add_argument("--out", help="where the PNG timelines go (default RUN/monitor/plots)")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG timelines")
    p.add_argument("--json", action="store_true", help="print the summary and the alerts as JSON")


def run(args):
    import json
    import math
    import sys
    from pathlib import Path

    from hpctrain.errors import ConfigError
    from hpctrain.monitor import report as R
    from hpctrain.slurm.status import runs_base

    if not (math.isfinite(args.poll) and args.poll > 0):
        raise ConfigError(f"--poll: got {args.poll}, expected seconds > 0")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout >= 0):
        raise ConfigError(f"--timeout: got {args.timeout}, expected seconds >= 0")
    if args.timeout is not None and not args.follow:
        raise ConfigError("--timeout bounds -f (following); add -f or drop --timeout")
    run_dir = R.find_run(args.run, runs_base(args.runs_dir))

    def write(line: str) -> None:
        print(line, flush=True)

    if args.follow:
        write(f"following {run_dir}/monitor (Ctrl-C stops)")
        rc = R.follow(run_dir, write, poll_s=args.poll, timeout_s=args.timeout)
        if rc == 124:
            print(f"hpctrain monitor: --timeout {args.timeout:g} s passed; the run goes on", file=sys.stderr)
            return rc
    data = R.load_samples(run_dir)
    rows = [R.summarize(rank, recs) for rank, recs in sorted(data.items())]
    alerts = R.alerts_of(data)
    pngs = [] if args.no_plots else R.write_timelines(run_dir, data, Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps({"ranks": [r.as_dict() for r in rows], "alerts": alerts,
                          "plots": [str(p) for p in pngs]}, indent=2, default=str))
        return 0
    write(R.format_summary(rows))
    write("")
    if alerts:
        write(f"{len(alerts)} alert(s):")
        for a in alerts:
            write("  " + R.alert_line(a))
    else:
        write("no alerts")
    for p in pngs:
        write(f"timeline: {p}")
    return 0
