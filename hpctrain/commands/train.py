"""hpctrain train CONFIG.yaml [--set section.key=value ...]"""

HELP = "train a model from a YAML config (one process, mpirun/hpctrain launch, or srun)"
DESCRIPTION = """Train a model described by CONFIG.yaml (see docs/training.md and docs/examples/).

The same command runs as one process, under 'hpctrain launch -n N --' / mpirun, and under
srun: ranks are discovered from the launcher. It resumes from the newest valid checkpoint in
run.dir, and returns at once if run.dir/result.json says the run is complete.

  hpctrain train docs/examples/digits_cnn.yaml --set run.dir=runs/try1
  hpctrain launch -n 2 -- hpctrain train docs/examples/digits_cnn.yaml --set comm.backend=mpi
  hpctrain train cfg.yaml --check        # validate only, start nothing
  srun --kill-on-bad-exit=1 hpctrain train cfg.yaml --requeue   # in an sbatch script (slurm/train.sbatch)

--requeue (inside a Slurm batch job): the signal of '#SBATCH --signal=USR2@90' only raises a
flag; the ranks stop at the next step boundary, write a checkpoint together, and rank 0 runs
'scontrol requeue' (a time-limit signal counts against --max-timeouts, a preemption does not).
This is the same code 'hpctrain submit' runs in its jobs (hpctrain.slurm.job.RunJob); see docs/slurm.md.
"""

TRAIN_REQUEUE_FIELDS = ("max_timeouts", "max_preemptions", "signal", "signal_delay_s")


def add_arguments(p):
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set optimizer.lr=0.01")
    p.add_argument("--check", action="store_true", help="validate the config against this world and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--key", metavar="KEYFILE", help="key file of encrypted shards (the same as --set data.key=KEYFILE)")
    from hpctrain.secure.cliargs import add_share_argument, add_trust_argument

    add_share_argument(p)
    add_trust_argument(p)
    g = p.add_argument_group("Slurm requeue (for sbatch scripts; 'hpctrain submit' sets this up itself)")
    g.add_argument("--requeue", action="store_true",
                   help="catch --signal (only a flag), checkpoint at the next step and 'scontrol requeue' this job")
    from hpctrain.config import add_flags
    from hpctrain.slurm.requeue import RequeuePolicy

    # no --restart: a plain sbatch script has no after-step to resubmit from, so it requeues
    add_flags(g, RequeuePolicy, TRAIN_REQUEUE_FIELDS)
    g.add_argument("--test-hold-at", type=int, metavar="STEP", dest="hold_at",
                   help="testing aid (with --requeue): wait at the STEP-th step boundary until the signal arrives "
                        "(once per run), so a test's signal always lands mid-run")


def run(args):
    import sys

    from hpctrain.env import rank_info
    from hpctrain.errors import HpctrainError
    from hpctrain.train.config import load_config
    from hpctrain.train.plan import check_runtime

    # Everything up to check_runtime is identical on every rank and runs before any process
    # group exists, so a bad config fails each rank the same way with exit status 2. Rank 0
    # reports it; the others wait a moment so that the launcher, seeing rank 0 fail first,
    # ends them silently. A rank whose check fails alone (a path missing on its node only)
    # still reports after the wait, so its error is never lost.
    from hpctrain.secure.cliargs import apply, check_config_path

    info = rank_info()
    overrides = list(args.overrides)
    if args.key:
        overrides.append(f"data.key={args.key}")  # the path only: every rank reads the key itself
    if args.group_share:
        overrides.append("run.group_share=true")
    try:
        apply(args)
        check_config_path(args.config)
        cfg = load_config(args.config, overrides)
        plan = check_runtime(cfg, info.world_size)
    except HpctrainError as e:
        if info.is_root:
            raise
        import time

        time.sleep(5)
        print(f"hpctrain train: error on rank {info.rank}: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if args.check:
        if info.is_root:
            ranks = f"{info.world_size} rank(s)" if plan.stages == 1 else (
                f"{info.world_size} ranks = {plan.replicas} replica(s) x {plan.stages} pipeline stages, "
                f"{plan.microbatches} microbatches; {plan.replicas}")
            print(f"config OK: {ranks} x batch {plan.batch_size} x {plan.accum} pass(es) = "
                  f"global batch {plan.global_batch}, peak lr {plan.lr:g}, run dir {cfg.run.dir}")
        return 0

    from hpctrain.comm.failfast import abort_on_error, install_excepthook
    from hpctrain.train.trainer import train

    if info.distributed:
        install_excepthook(info.rank)
    from hpctrain.comm import shutdown_shared

    with abort_on_error(info.world_size, info.rank, message_only=(HpctrainError,)):
        if args.requeue:
            from hpctrain.config import flag_values
            from hpctrain.slurm.job import train_requeue_aware
            from hpctrain.slurm.requeue import RequeuePolicy

            policy = RequeuePolicy(**flag_values(RequeuePolicy, args, TRAIN_REQUEUE_FIELDS))
            outcome, result = train_requeue_aware(cfg, policy, hold_at=args.hold_at)
        else:
            outcome, result = None, train(cfg)
        shutdown_shared()
    if outcome is not None:
        return outcome
    if info.is_root:
        m = result.metrics
        if "val_r2" in m:
            print(f"hpctrain train: {result.status} at step {result.step} (epoch {result.epoch}): "
                  f"val R^2 {m['val_r2']:.4f}, MSE {m['val_mse']:.4g}, MAE {m['val_mae']:.4g}; run dir {cfg.run.dir}")
        elif "val_macro_f1" in m:
            print(f"hpctrain train: {result.status} at step {result.step} (epoch {result.epoch}): "
                  f"val macro F1 {m['val_macro_f1']:.4f}, accuracy {m['val_accuracy']:.4f}; run dir {cfg.run.dir}")
        else:
            print(f"hpctrain train: {result.status} at step {result.step} (epoch {result.epoch}); "
                  f"run dir {cfg.run.dir}")
        sys.stdout.flush()
    return 0 if result.status == "completed" else 3
