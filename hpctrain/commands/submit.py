"""hpctrain submit CONFIG.yaml"""

HELP = "submit a training run to Slurm (submitit); it requeues on preemption/timeout and retries crashes"
DESCRIPTION = """Submit CONFIG.yaml as a Slurm job through submitit: one srun task per rank with
--kill-on-bad-exit=1, logs per rank under the run dir (runs/<run.name>, stable across
requeues and retries).

Before the time limit (and on 'scancel --signal=USR2 JOB') the ranks checkpoint at the next
step boundary and rank 0 requeues the job; it resumes from the newest checkpoint. Timeouts
count against --max-timeouts, preemptions are unlimited unless --max-preemptions. A crash
is resubmitted up to --retries times with backoff; bad config/import errors are not.

  hpctrain submit run.yaml --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 --time 4:00:00
  hpctrain submit run.yaml --dry-run            # print the exact sbatch script
  hpctrain submit run.yaml --cluster local      # same job logic, no Slurm (foreground)
  hpctrain submit --counter 300 --time 5        # smoke-test requeue with a tiny built-in task
  hpctrain submit run.yaml --wait --wait-timeout 7200   # block until it has really finished
  hpctrain submit --script train.py --ntasks-per-node 2 -- --data shards/x   # your own script

--script runs your Python script on every rank as the job (see docs/your-model.md): with
hpctrain.session() in it, it gets the same requeue, retry and status handling as a config
run. The working directory and PYTHONPATH of this shell are recorded so the job finds your
code; the run dir is <runs>/<--name or the script's name>.

--wait prints one line per state change (requeues and retries are waited through) and exits
0 when the run COMPLETED, 1 when it ended otherwise (FAILED, CANCELLED), 2 for bad input,
124 when --wait-timeout passed first and 130 on Ctrl-C; neither of the last two cancels it.
"""


def add_arguments(p):
    p.add_argument("config", nargs="?", help="training config (YAML); omit with --counter or --script")
    p.add_argument("script_args", nargs="*", metavar="-- ARGS", help="with --script: the script's arguments")
    p.add_argument("--script", metavar="SCRIPT.py", help="run your own training script as the job (hpctrain.session)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set optimizer.lr=0.01 (repeatable)")
    add_job_arguments(p)
    from hpctrain.commands.status import add_wait_arguments

    add_wait_arguments(p)


def add_job_arguments(p):
    r = p.add_argument_group("resources")
    r.add_argument("--nodes", type=int, default=1)
    r.add_argument("--ntasks-per-node", type=int, default=1, help="ranks per node (one srun task each)")
    r.add_argument("--gpus-per-node", type=int, default=0)
    r.add_argument("--cpus-per-task", type=int, default=1)
    r.add_argument("--mem", help="memory per node, e.g. 32G")
    q = p.add_argument_group("queue")
    q.add_argument("--time", help="time limit (Slurm syntax: MM, HH:MM:SS, D-HH:MM)")
    q.add_argument("--partition")
    q.add_argument("--account")
    q.add_argument("--qos")
    q.add_argument("--constraint")
    q.add_argument("--exclusive", action="store_true")
    q.add_argument("--mpi", help="srun --mpi plugin for comm.backend mpi/horovod (default: pmix when several "
                                 "ranks and 'srun --mpi=list' offers it; with the site default 'none' MPI_Init "
                                 "aborts); comm.backend torch needs none")
    q.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run before srun, e.g. 'module load cuda' (repeatable)")
    f = p.add_argument_group("requeue and retries")
    f.add_argument("--retries", type=int, default=0, help="resubmissions after a crash (default 0)")
    f.add_argument("--retry-backoff", type=float, default=30.0, help="seconds before the first retry; doubles")
    f.add_argument("--max-timeouts", type=int, default=3, help="requeues after hitting --time (default 3)")
    f.add_argument("--max-preemptions", type=int, default=None, help="requeues after preemption (default unlimited)")
    f.add_argument("--signal", default="USR2", help="signal sent before the end (default USR2; USR1 is refused)")
    f.add_argument("--signal-delay", type=int, default=90, help="seconds before the end it is sent (default 90)")
    m = p.add_argument_group("submission")
    m.add_argument("--name", help="run name (default: run.name of the config); keys the run dir")
    m.add_argument("--cluster", choices=["slurm", "local"], default="slurm")
    m.add_argument("--dry-run", action="store_true", help="print the exact sbatch script, submit nothing")
    m.add_argument("--runs-dir", help="where --counter and --script runs live (default: $HPCTRAIN_RUNS or runs)")
    c = p.add_argument_group("built-in smoke-test task (instead of CONFIG)")
    c.add_argument("--counter", type=int, metavar="STEPS", help="run a tiny resumable counter of STEPS steps")
    c.add_argument("--counter-step-s", type=float, default=0.1, help="seconds per counter step")
    c.add_argument("--counter-crash-at", type=int, help="the counter SIGKILLs itself once at this step")
    c.add_argument("--counter-fail", action="store_true", help="the counter raises a permanent (config) error")


def build_submission(args, *, name=None, run_dir=None, task=None):
    """(Submission, description) from parsed arguments; pure apart from reading the config."""
    import math
    from pathlib import Path

    from hpctrain.errors import ConfigError
    from hpctrain.slurm.counter import CounterTask
    from hpctrain.slurm.job import RunJob, TrainTask
    from hpctrain.slurm.requeue import RequeuePolicy
    from hpctrain.slurm.retry import RetryPolicy
    from hpctrain.slurm.sbatch import JobSpec
    from hpctrain.slurm.status import default_base
    from hpctrain.slurm.submit import Submission

    # RetryPolicy refuses negatives; NaN and inf pass '< 0' and would become 'sbatch --begin=now+nan'
    for flag, v in (("--retry-backoff", args.retry_backoff), ("--counter-step-s", args.counter_step_s)):
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"{flag} must be a finite number of seconds >= 0, got {v}")
    cfg = None
    script = getattr(args, "script", None)
    # after '--' argparse hands every word to the positionals, the first one to CONFIG
    script_args = ([args.config] if args.config else []) + list(getattr(args, "script_args", []) or [])
    if not script and getattr(args, "script_args", None):
        raise ConfigError(f"unexpected arguments {args.script_args}; only --script takes arguments after '--'")
    if task is None and script:
        from hpctrain.slurm.script import ScriptTask

        if args.counter is not None or args.overrides:
            raise ConfigError("--script runs your own script: drop --counter and --set (pass the script's own "
                              "arguments after '--')")
        task = ScriptTask.record(script, script_args)
        name = name or args.name or Path(script).stem
        base = Path(args.runs_dir) if args.runs_dir else default_base()
        run_dir = run_dir or base / name
    if task is None:
        if args.counter is not None:
            if args.config:
                raise ConfigError("give either CONFIG.yaml or --counter, not both")
            task = CounterTask(steps=args.counter, step_s=args.counter_step_s, crash_once_at=args.counter_crash_at,
                               permanent_error=args.counter_fail)
            name = name or args.name or "counter"
            base = Path(args.runs_dir) if args.runs_dir else default_base()
            run_dir = run_dir or base / name
        else:
            if not args.config:
                raise ConfigError("no CONFIG.yaml given; usage: hpctrain submit CONFIG.yaml [options] "
                                  "(or --counter STEPS for a smoke test)")
            try:
                from hpctrain.train.config import load_config
            except ImportError as e:
                raise ConfigError(f"the trainer is not importable ({e}); reinstall hpctrain") from e
            overrides = list(args.overrides)
            if args.name:
                overrides.append(f"run.name={args.name}")
            cfg = load_config(args.config, overrides)  # a bad config fails here, before any queue wait
            name = name or cfg.run.name
            run_dir = run_dir or Path(cfg.run.dir)
            task = TrainTask(config=str(Path(run_dir).resolve() / "slurm" / "config.yaml"), overrides=overrides)
    run_dir = Path(run_dir).resolve()
    mpi = args.mpi
    ranks = (args.nodes or 1) * (args.ntasks_per_node or 1)
    # a script's backend is unknown here, and even ONE rank that calls MPI_Init under srun aborts
    # without a PMI plugin (the site default is often 'none'): ask for one whenever srun offers it
    if (mpi is None and args.cluster != "local"
            and ((ranks > 1 and cfg is not None and cfg.comm.backend in ("mpi", "horovod")) or script)):
        from hpctrain.slurm.environment import auto_mpi_plugin

        mpi = auto_mpi_plugin()  # several MPI ranks under srun need PMIx; --mpi overrides
    policy = RequeuePolicy(max_timeouts=args.max_timeouts, max_preemptions=args.max_preemptions,
                           signal=args.signal, signal_delay_s=args.signal_delay)
    spec = JobSpec(name=name, run_dir=run_dir, nodes=args.nodes, ntasks_per_node=args.ntasks_per_node,
                   gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time,
                   partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint,
                   exclusive=args.exclusive, signal=args.signal, signal_delay_s=args.signal_delay, setup=args.setup,
                   mpi=mpi)
    return Submission(spec=spec, job=RunJob(run_dir=str(run_dir), task=task, policy=policy),
                      retry=RetryPolicy(retries=args.retries, backoff_s=args.retry_backoff), cluster=args.cluster)


def run(args):
    import shlex
    import shutil

    from hpctrain.errors import ClusterError, ConfigError
    from hpctrain.slurm.job import TrainTask, result_completed
    from hpctrain.slurm.sbatch import render_sbatch
    from hpctrain.slurm.submit import active_job, run_local, submit_slurm
    from hpctrain.slurm.wait import check_wait_options

    # before anything is submitted: a bad --poll must not leave a job behind unwatched
    poll_s = check_wait_options(wait=args.wait, poll_s=args.poll, timeout_s=args.wait_timeout)
    if args.wait and args.dry_run:
        raise ConfigError("--dry-run submits nothing, so there is nothing to --wait for; drop one of them")
    if args.wait_timeout is not None and args.cluster == "local":
        raise ConfigError("--cluster local runs in the foreground until the run ends; --wait-timeout does not "
                          "apply there (use --cluster slurm, or drop it)")
    sub = build_submission(args)
    spec = sub.spec
    if args.dry_run:
        print(render_sbatch(spec), end="")
        return 0
    if result_completed(spec.run_dir):
        print(f"run {spec.name!r} already completed ({spec.run_dir / 'result.json'}); nothing to submit. "
              "Choose another --name to train again")
        return 0
    if sub.cluster == "slurm":
        live = active_job(spec.run_dir)
        if live:
            raise ClusterError(f"run {spec.name!r} already has job {live[0]} ({live[1]}); see 'hpctrain status "
                               f"{spec.run_dir}' (add --wait to wait for it) or 'hpctrain cancel {spec.run_dir}' "
                               "first")
    if isinstance(sub.job.task, TrainTask):
        from hpctrain.fileio import atomic_path

        snapshot = spec.run_dir / "slurm" / "config.yaml"
        with atomic_path(snapshot) as tmp:
            shutil.copyfile(args.config, tmp)
    if sub.cluster == "local":
        rc = run_local(sub)
        print(f"run {spec.name!r}: {'COMPLETED' if rc == 0 else 'FAILED'}; see 'hpctrain status {spec.run_dir}'")
        return rc
    job_id = submit_slurm(sub)
    q = shlex.quote(str(spec.run_dir))
    print(f"submitted run {spec.name!r} as job {job_id}; run dir {spec.run_dir}")
    print(f"  hpctrain status {q}    hpctrain logs {q} -f    hpctrain cancel {q}", flush=True)
    if not args.wait:
        return 0
    from hpctrain.slurm.status import wait_run

    return wait_run(spec.run_dir, poll_s=poll_s, timeout_s=args.wait_timeout)
