"""hpctrain sweep CONFIG.yaml --grid/--random/--bayes"""

HELP = "hyperparameter sweep: grid/random as one Slurm job array, Bayesian via Optuna waves"
DESCRIPTION = """Run a sweep of CONFIG.yaml. Every trial is a requeue-safe run in SWEEP/trials/trial-I.

  hpctrain sweep run.yaml --grid optimizer.lr=1e-3,1e-2 --grid model.dropout=0,0.1 --parallel 2
  hpctrain sweep run.yaml --random 'optimizer.lr=loguniform(1e-4,1e-1)' --trials 16 --parallel 4
  hpctrain sweep run.yaml --bayes 'optimizer.lr=loguniform(1e-4,1e-1)' --trials 16 --parallel 4

Grid and random trials run as one job array throttled to --parallel at once (%P). --bayes asks
Optuna (a JournalFileStorage in the sweep dir: no database server) for --parallel trials at a
time and submits each wave as an array. Failed trials are recorded, not fatal. At the end the
table goes to SWEEP/results.csv and the best point is printed. Running the same command again
resumes waiting on the existing sweep instead of submitting it twice.

Before anything is submitted (--dry-run too), every trial's config is loaded as 'hpctrain train
--check' loads it, and --metric is checked against what the trials report; a bad key or value
exits 2 naming the trial. A sweep has at most 10000 trials, and no more than the cluster's
MaxArraySize (read from 'scontrol show config' when submitting). See docs/slurm.md."""


def add_arguments(p):
    from hpctrain.commands.submit import add_job_arguments

    p.add_argument("config", nargs="?", help="training config (YAML); omit with --counter")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every trial (repeatable)")
    s = p.add_argument_group("search")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="grid axis (repeatable)")
    s.add_argument("--random", action="append", default=[], metavar="KEY=DIST",
                   help="random axis: uniform(a,b), loguniform(a,b), int(a,b), choice(x,y) (repeatable)")
    s.add_argument("--bayes", nargs="*", metavar="KEY=DIST", default=None,
                   help="Bayesian (Optuna TPE) over these axes (or those of --random)")
    s.add_argument("--trials", type=int, help="number of trials (random, bayes)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random/Optuna sampler")
    s.add_argument("--parallel", type=int, help="trials running at once (array %%P; bayes wave size)")
    s.add_argument("--metric", default=None,
                   help="result.json metric to rank trials by: val_loss (the default), val_accuracy, val_macro_f1, "
                        "val_r2/val_mse/val_mae (regression) or best_epoch; loss (the default) for --counter")
    s.add_argument("--mode", choices=["min", "max"], default="min")
    s.add_argument("--no-wait", action="store_true", help="submit and return (grid/random only)")
    s.add_argument("--wait-timeout", type=float, default=None, help="stop waiting after this many seconds")
    add_job_arguments(p)


def run(args):
    from hpctrain.commands.submit import request_from_args
    from hpctrain.slurm.sweep_run import SweepRequest, run_sweep

    req = SweepRequest(submit=request_from_args(args), grid=list(args.grid), random=list(args.random),
                       bayes=None if args.bayes is None else list(args.bayes), trials=args.trials, seed=args.seed,
                       parallel=args.parallel, metric=args.metric, mode=args.mode, no_wait=args.no_wait,
                       wait_timeout=args.wait_timeout, dry_run=args.dry_run)
    return run_sweep(req, say=lambda line: print(line, flush=True))
