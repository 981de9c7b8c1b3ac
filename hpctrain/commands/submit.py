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
    from hpctrain.secure.cliargs import add_share_argument, add_trust_argument

    add_share_argument(p)
    add_trust_argument(p)

    add_wait_arguments(p)


def add_job_arguments(p):
    """The flags of a submission; resources, queue, requeue and retry ones come from the dataclasses."""
    from hpctrain.config import add_flags
    from hpctrain.slurm.requeue import RequeuePolicy
    from hpctrain.slurm.retry import RetryPolicy
    from hpctrain.slurm.sbatch import QUEUE_FIELDS, RESOURCE_FIELDS, JobSpec

    add_flags(p.add_argument_group("resources"), JobSpec, RESOURCE_FIELDS)
    add_flags(p.add_argument_group("queue"), JobSpec, QUEUE_FIELDS)
    f = p.add_argument_group("requeue and retries")
    add_flags(f, RetryPolicy, ("retries", "backoff_s"))
    add_flags(f, RequeuePolicy)
    f.add_argument("--test-hold-at", type=int, metavar="STEP", dest="hold_at",
                   help="testing aid: the job waits at its STEP-th step boundary until the preemption signal "
                        "arrives (once per run), so a test's signal always lands mid-run")
    m = p.add_argument_group("submission")
    m.add_argument("--name", help="run name (default: run.name of the config); keys the run dir")
    m.add_argument("--cluster", choices=["slurm", "local"], default="slurm")
    m.add_argument("--dry-run", action="store_true", help="print the exact sbatch script, submit nothing")
    m.add_argument("--runs-dir", help="the run dir is RUNS_DIR/<name> (default: run.dir of the config, which is "
                                      "runs/<run.name> unless set; for --counter and --script $HPCTRAIN_RUNS or "
                                      "runs); refused when run.dir is set in the config or by --set")
    c = p.add_argument_group("built-in smoke-test task (instead of CONFIG)")
    c.add_argument("--counter", type=int, metavar="STEPS", help="run a tiny resumable counter of STEPS steps")
    c.add_argument("--counter-step-s", type=float, default=0.1, help="seconds per counter step")
    c.add_argument("--counter-crash-at", type=int, help="the counter SIGKILLs itself once at this step")
    c.add_argument("--counter-fail", action="store_true", help="the counter raises a permanent (config) error")


def request_from_args(args):
    """The typed :class:`hpctrain.slurm.request.SubmitRequest` of parsed submit/sweep arguments."""
    from hpctrain.config import flag_values
    from hpctrain.slurm.counter import CounterTask
    from hpctrain.slurm.request import SubmitRequest
    from hpctrain.slurm.requeue import RequeuePolicy
    from hpctrain.slurm.retry import RetryPolicy
    from hpctrain.slurm.sbatch import QUEUE_FIELDS, RESOURCE_FIELDS, JobSpec

    import os

    from hpctrain.secure.cliargs import apply, check_config_path
    from hpctrain.secure.perms import private_umask

    apply(args)
    for path in (args.config, getattr(args, "script", None)):
        if path and os.path.isfile(path):  # the config, or the script the job will run
            check_config_path(path, "config" if path == args.config else "script")
    group = bool(getattr(args, "group_share", False))
    if group:
        args.overrides = [*args.overrides, "run.group_share=true"]
    # before the run dir, submitit's pickles and the sbatch script exist; the job inherits it
    private_umask(group)
    counter = None
    if args.counter is not None:
        counter = CounterTask(steps=args.counter, step_s=args.counter_step_s, crash_once_at=args.counter_crash_at,
                              permanent_error=args.counter_fail)
    config, script_args = args.config, list(getattr(args, "script_args", None) or [])
    if getattr(args, "script", None):
        # after '--' argparse hands every word to the positionals, the first one to CONFIG
        config, script_args = None, ([args.config] if args.config else []) + script_args
    return SubmitRequest(config=config, overrides=list(args.overrides), name=args.name, runs_dir=args.runs_dir,
                         script=getattr(args, "script", None), script_args=script_args,
                         cluster=args.cluster, job=flag_values(JobSpec, args, RESOURCE_FIELDS + QUEUE_FIELDS),
                         requeue=RequeuePolicy(**flag_values(RequeuePolicy, args)),
                         retry=RetryPolicy(**flag_values(RetryPolicy, args, ("retries", "backoff_s"))),
                         counter=counter, hold_at=args.hold_at)


def run(args):
    from hpctrain.slurm.request import submit_run

    return submit_run(request_from_args(args), dry_run=args.dry_run, wait=args.wait, poll_s=args.poll,
                      wait_timeout=args.wait_timeout, echo=lambda line: print(line, flush=True))
