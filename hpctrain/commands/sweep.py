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


def _points(args):
    from hpctrain.errors import ConfigError
    from hpctrain.slurm.sweep import check_trial_count, parse_grid, parse_space, sample_random

    modes = [bool(args.grid), bool(args.random) and args.bayes is None, args.bayes is not None]
    if sum(modes) != 1:
        raise ConfigError("choose exactly one of --grid, --random or --bayes")
    if args.grid:
        return "grid", parse_grid(args.grid), None
    if args.trials is None or args.trials < 1:
        raise ConfigError("--random and --bayes need --trials N (N >= 1)")
    check_trial_count(args.trials, f"--trials {args.trials}")  # before a single point is sampled
    space = parse_space(args.random + (args.bayes or []))
    if not space:
        raise ConfigError("--bayes needs a search space: --bayes 'optimizer.lr=loguniform(1e-4,1e-1)'")
    if args.bayes is not None:
        return "bayes", None, space
    return "random", sample_random(space, args.trials, args.seed), space


def _task_factory(args, sub, name):
    import dataclasses

    from hpctrain.errors import ConfigError
    from hpctrain.slurm.job import TrainTask
    from hpctrain.slurm.sweep import to_overrides

    base = sub.job.task
    if isinstance(base, TrainTask):
        def make(point, i):
            return TrainTask(config=base.config, overrides=[*base.overrides, *to_overrides(point),
                                                            f"run.name={name}-t{i}"])
        return make
    fields = {f.name for f in dataclasses.fields(base)}

    def make_counter(point, i):
        bad = sorted(set(point) - fields)
        if bad:
            raise ConfigError(f"the counter task has no field(s) {bad}; valid: {sorted(fields)}")
        return dataclasses.replace(base, **point)
    return make_counter


def _metric(args, sub) -> str:
    """--metric checked against what the trials will write to result.json (or its default)."""
    import sys

    from hpctrain.slurm.job import TrainTask
    from hpctrain.slurm.sweep import check_metric, metric_names

    task = sub.job.task
    val_split = True
    if isinstance(task, TrainTask):
        from hpctrain.train.config import load_config

        val_split = load_config(args.config, task.overrides).data.val_split is not None
    names = metric_names(counter=not isinstance(task, TrainTask), val_split=val_split)
    if args.metric is not None:
        check_metric(args.metric, names, val_split=val_split)
        return args.metric
    if not isinstance(task, TrainTask):
        return "loss"
    if not val_split:
        print("hpctrain sweep: warning: data.val_split is null, so no trial reports a validation metric and the "
              "table cannot rank them; set data.val_split to rank them by val_loss", file=sys.stderr)
    return "val_loss"


def _label(point: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())


def _check_trials(args, kind, points, space, make_task) -> None:
    """Every trial's config through the trainer's own loader (as 'hpctrain train --check' loads
    it) before anything is submitted, so a typo in a key or a bad value exits 2 here instead of
    failing each array task in the queue. For --random the bounds of every axis are checked too,
    for --bayes (whose points Optuna draws later) the bounds and one sampled point."""
    from hpctrain.errors import ConfigError
    from hpctrain.slurm.job import TrainTask
    from hpctrain.slurm.sweep import sample_random

    cands = []
    if kind != "grid":
        # each axis alone (the other keys as the config has them): an error is that axis's fault
        for key, dist in space.items():
            what = "one of its choice() values" if dist.kind == "choice" else \
                f"a bound of {dist.kind}({', '.join(repr(a) for a in dist.args)})"
            for v in dist.args:  # (low, high) of a range, every value of a choice
                cands.append((f"{key}={v!r} ({what})", 0, {key: v}))
        if not points:
            first = sample_random(space, 1, args.seed)[0]
            cands.append((f"a sampled point ({_label(first)})", 0, first))
    cands += [(f"trial {i} ({_label(p)})", i, p) for i, p in enumerate(points or [])]
    loaded: dict = {}

    def check(point: dict, i: int) -> None:
        task = make_task(point, i)  # the counter's factory checks its field names here
        if isinstance(task, TrainTask):
            from hpctrain.config import load_yaml
            from hpctrain.train.config import load_config

            if "data" not in loaded:
                loaded["data"] = load_yaml(args.config)
            load_config(loaded["data"], task.overrides)

    problems: dict[str, list[str]] = {}
    for label, i, point in cands:
        try:
            check(point, i)
        except ConfigError as e:
            problems.setdefault(str(e), []).append(label)
    if not problems:
        return
    n = sum(len(v) for v in problems.values())
    lines = []
    for msg, labels in list(problems.items())[:5]:
        more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
        lines.append(f"  {'; '.join(labels[:3])}{more}: {msg}")
    if len(problems) > 5:
        lines.append(f"  ... and {len(problems) - 5} other problem(s)")
    raise ConfigError(f"{n} of the sweep's {len(cands)} checked trial config(s) are invalid; nothing was "
                      "submitted. Fix the --grid/--random/--bayes values or --set:\n" + "\n".join(lines))


def run(args):
    import shutil
    import sys
    from pathlib import Path

    from hpctrain.commands.submit import build_submission
    from hpctrain.errors import ConfigError
    from hpctrain.slurm.job import TrainTask
    from hpctrain.slurm.sbatch import render_sbatch
    from hpctrain.slurm.status import default_base
    from hpctrain.slurm.sweep import (check_array_indices, format_sweep, is_sweep_dir, load_sweep, max_array_size,
                                      save_sweep, submit_array, sweep_rows, wait_trials, write_results)
    from hpctrain.slurm.wait import check_wait_options

    kind, points, space = _points(args)
    if args.cluster != "slurm":
        raise ConfigError("sweeps run as Slurm job arrays; --cluster local is for single runs")
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    check_wait_options(wait=True, poll_s=None, timeout_s=args.wait_timeout)  # a NaN timeout never ends
    if args.counter is not None:
        name = args.name or "counter-sweep"
        base = Path(args.runs_dir) if args.runs_dir else default_base()
        sub = build_submission(args, name=name, run_dir=base / name)
    else:
        sub = build_submission(args)
        if not args.name:  # a sweep dir must not collide with the single run of the same config
            name = f"{sub.spec.name}-sweep"
            sub = build_submission(args, name=name, run_dir=Path(sub.spec.run_dir).parent / name)
    name, sweep_dir = sub.spec.name, sub.spec.run_dir
    make_task = _task_factory(args, sub, name)
    metric = _metric(args, sub)
    _check_trials(args, kind, points, space, make_task)
    if args.dry_run:
        import dataclasses

        n = len(points) if points is not None else min(args.parallel or args.trials, args.trials)
        spec = dataclasses.replace(sub.spec, array_size=n, array_parallelism=min(args.parallel or n, n))
        print(render_sbatch(spec), end="")
        return 0
    say = print
    if is_sweep_dir(sweep_dir):
        meta = load_sweep(sweep_dir)
        if kind != "bayes" and [t["params"] for t in meta["trials"]] != points:
            raise ConfigError(f"sweep {name!r} already exists in {sweep_dir} with other points; "
                              "choose another --name (or remove the dir)")
        say(f"sweep {name!r} exists ({len(meta['trials'])} trials); waiting on it instead of resubmitting")
    else:
        # MaxArraySize is asked here, not for --dry-run, which must work without a cluster
        check_array_indices(len(points) if points is not None else args.trials, max_array_size())
        if isinstance(sub.job.task, TrainTask):
            from hpctrain.fileio import atomic_path

            with atomic_path(Path(sub.job.task.config)) as tmp:
                shutil.copyfile(args.config, tmp)
        meta = {"name": name, "kind": kind, "metric": metric, "mode": args.mode, "trials": [], "job_ids": [],
                "planned": len(points) if points is not None else args.trials}
        if kind != "bayes":
            meta["trials"] = [{"index": i, "params": p} for i, p in enumerate(points)]
            save_sweep(sweep_dir, meta)
            job = submit_array(sub, sweep_dir, points, 0, args.parallel, make_task)
            meta["job_ids"].append(job)
            save_sweep(sweep_dir, meta)
            say(f"submitted sweep {name!r}: {len(points)} trials as array job {job} "
                f"(at most {args.parallel or len(points)} at once); dir {sweep_dir}")
    if kind == "bayes":
        _bayes(args, sub, sweep_dir, meta, space, make_task, say)
    elif args.no_wait:
        say(f"not waiting; later: hpctrain status {sweep_dir}")
        return 0
    else:
        wait_trials(sweep_dir, [t["index"] for t in meta["trials"]], timeout_s=args.wait_timeout,
                    on_update=lambda s: print(f"  trials: {s}", flush=True))
    rows = sweep_rows(sweep_dir)
    path = write_results(sweep_dir, rows)
    print(format_sweep(sweep_dir, rows))
    print(f"results: {path}")
    sys.stdout.flush()
    return 0


def _cancelled(sweep_dir) -> bool:
    from hpctrain.slurm import journal

    return any(e.get("event") == "cancelled" for e in journal.read_events(sweep_dir))


def _bayes(args, sub, sweep_dir, meta, space, make_task, say):
    import optuna

    from hpctrain.slurm.sweep import journal_storage, optuna_distributions, save_sweep, submit_array, trial_dir
    from hpctrain.slurm.sweep import trial_metric, wait_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=meta["name"], storage=journal_storage(sweep_dir), load_if_exists=True,
                                direction="minimize" if args.mode == "min" else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    dists = optuna_distributions(space)
    wave = max(1, min(args.parallel or 1, args.trials))
    while True:
        untold = [t for t in meta["trials"] if not t.get("told")]
        if untold:
            wait_trials(sweep_dir, [t["index"] for t in untold], timeout_s=args.wait_timeout,
                        on_update=lambda s: print(f"  wave: {s}", flush=True))
            for t in untold:
                value = trial_metric(trial_dir(sweep_dir, t["index"]), meta["metric"])
                if value is None:
                    study.tell(t["number"], state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(t["number"], value)
                t["told"] = True
            save_sweep(sweep_dir, meta)
        if len(meta["trials"]) >= args.trials:
            return
        if _cancelled(sweep_dir):  # 'hpctrain cancel' stopped this wave's jobs: no further waves
            say(f"sweep {meta['name']!r} was cancelled ('hpctrain cancel'): no further waves after "
                f"{len(meta['trials'])} of {args.trials} trials; start a new sweep (--name) to go on")
            return
        k = min(wave, args.trials - len(meta["trials"]))
        asked = [study.ask(dists) for _ in range(k)]
        first = len(meta["trials"])
        new = [{"index": first + j, "number": tr.number, "params": dict(tr.params)} for j, tr in enumerate(asked)]
        meta["trials"] += new
        save_sweep(sweep_dir, meta)
        job = submit_array(sub, sweep_dir, [t["params"] for t in new], first, k, make_task)
        meta["job_ids"].append(job)
        save_sweep(sweep_dir, meta)
        say(f"bayes wave: trials {first}-{first + k - 1} as array job {job}")
