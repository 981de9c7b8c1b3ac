"""Running a sweep: the trial checks, one job array per grid/random sweep (or per Bayesian wave),
waiting, and the results table. ``hpctrain sweep`` only parses its flags into a :class:`SweepRequest`.

The pieces (parsing the axes, the sweep dir, submitting an array) are :mod:`hpctrain.slurm.sweep`;
the Optuna loop is :mod:`hpctrain.slurm.bayes`.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from hpctrain.errors import ConfigError
from hpctrain.fileio import atomic_path
from hpctrain.slurm.bayes import run_bayes
from hpctrain.slurm.job import TrainTask
from hpctrain.slurm.request import SubmitRequest, build_submission
from hpctrain.slurm.sbatch import render_sbatch
from hpctrain.slurm.status import default_base
from hpctrain.slurm.sweep import (Dist, check_array_indices, check_metric, check_trial_count, format_sweep,
                                  is_sweep_dir, load_sweep, max_array_size, metric_names, parse_grid, parse_space,
                                  sample_random, save_sweep, submit_array, sweep_rows, to_overrides, wait_trials,
                                  write_results)
from hpctrain.slurm.wait import check_wait_options


@dataclass(kw_only=True)
class SweepRequest:
    submit: SubmitRequest                  # the config (or counter), job resources and policies of every trial
    grid: list[str] = field(default_factory=list)     # --grid KEY=V1,V2 axes
    random: list[str] = field(default_factory=list)   # --random KEY=DIST axes
    bayes: list[str] | None = None         # --bayes KEY=DIST axes (an empty list: those of ``random``)
    trials: int | None = None              # random and bayes
    seed: int = 0
    parallel: int | None = None            # trials at once (array %P; the Bayesian wave size)
    metric: str | None = None              # default val_loss (loss for the counter)
    mode: Literal["min", "max"] = "min"
    no_wait: bool = False                  # submit and return (grid/random only)
    wait_timeout: float | None = None
    dry_run: bool = False


def _points(args: SweepRequest):
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


def _task_factory(sub, name: str) -> Callable[[dict, int], Any]:
    """(params, trial index) -> the trial's task: the config with the point as overrides, or the counter."""
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


def _metric(args: SweepRequest, sub) -> str:
    """--metric checked against what the trials will write to result.json (or its default)."""
    task = sub.job.task
    val_split = True
    if isinstance(task, TrainTask):
        from hpctrain.train.config import load_config

        val_split = load_config(args.submit.config, task.overrides).data.val_split is not None
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


def _check_trials(args: SweepRequest, kind: str, points: list[dict] | None, space: dict[str, Dist] | None,
                  make_task: Callable[[dict, int], Any]) -> None:
    """Every trial's config through the trainer's own loader (as 'hpctrain train --check' loads
    it) before anything is submitted, so a typo in a key or a bad value exits 2 here instead of
    failing each array task in the queue. For --random the bounds of every axis are checked too,
    for --bayes (whose points Optuna draws later) the bounds and one sampled point."""
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
                loaded["data"] = load_yaml(args.submit.config)
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


def run_sweep(args: SweepRequest, *, say: Callable[[str], None] = print) -> int:
    """Submit (or resume waiting on) a sweep and print its table; the exit code of ``hpctrain sweep``."""
    req = args.submit
    kind, points, space = _points(args)
    if req.cluster != "slurm":
        raise ConfigError("sweeps run as Slurm job arrays; --cluster local is for single runs")
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    check_wait_options(wait=True, poll_s=None, timeout_s=args.wait_timeout)  # a NaN timeout never ends
    if req.counter is not None:
        name = req.name or "counter-sweep"
        base = Path(req.runs_dir) if req.runs_dir else default_base()
        sub = build_submission(req, name=name, run_dir=base / name)
    else:
        sub = build_submission(req)
        if not req.name:  # a sweep dir must not collide with the single run of the same config
            name = f"{sub.spec.name}-sweep"
            sub = build_submission(req, name=name, run_dir=Path(sub.spec.run_dir).parent / name)
    name, sweep_dir = sub.spec.name, sub.spec.run_dir
    make_task = _task_factory(sub, name)
    metric = _metric(args, sub)
    _check_trials(args, kind, points, space, make_task)
    if args.dry_run:
        n = len(points) if points is not None else min(args.parallel or args.trials, args.trials)
        spec = dataclasses.replace(sub.spec, array_size=n, array_parallelism=min(args.parallel or n, n))
        say(render_sbatch(spec).rstrip("\n"))
        return 0
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
            with atomic_path(Path(sub.job.task.config)) as tmp:
                shutil.copyfile(req.config, tmp)
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
        run_bayes(sub, sweep_dir, meta, space, make_task, trials=args.trials, parallel=args.parallel, seed=args.seed,
                  mode=args.mode, wait_timeout=args.wait_timeout, say=say)
    elif args.no_wait:
        say(f"not waiting; later: hpctrain status {sweep_dir}")
        return 0
    else:
        wait_trials(sweep_dir, [t["index"] for t in meta["trials"]], timeout_s=args.wait_timeout,
                    on_update=lambda s: say(f"  trials: {s}"))
    rows = sweep_rows(sweep_dir)
    path = write_results(sweep_dir, rows)
    say(format_sweep(sweep_dir, rows))
    say(f"results: {path}")
    return 0
