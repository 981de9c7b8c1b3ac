"""Hyperparameter sweeps: grid and random as one Slurm job array (throttled with %P),
Bayesian through Optuna with a JournalFileStorage in the sweep dir (no database server),
driving waves of array tasks.

Every trial is an ordinary requeue-safe run in ``SWEEP/trials/trial-I`` (its own events,
checkpoints, result.json, retries). A failed trial is recorded, never fatal to the sweep.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hpctrain import rundir
from hpctrain.errors import ClusterError, ConfigError
from hpctrain.fileio import atomic_path
from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.job import RunJob
from hpctrain.slurm.sbatch import JobSpec
from hpctrain.slurm.status import run_status
from hpctrain.slurm.submit import Submission, make_slurm_executor, prepare_dirs, save_submission

_DIST = re.compile(r"^\s*(uniform|loguniform|int|choice)\s*\((.*)\)\s*$")

# Every trial is a run dir, a pickled submission and a config check on the submitting host
# (~1 ms each), and grid/random trials form one Slurm job array whose indices must stay below
# the cluster's MaxArraySize (Slurm's default 1001; sites raise it in slurm.conf). 10000 is
# well above what one sweep sensibly runs and still quick to prepare; a larger request (a
# typo like --trials 1000000000, or a grid product that explodes) is refused before any
# point is generated, instead of hanging the host.
MAX_TRIALS = 10_000

# The scalar metrics the trainer writes to result.json (hpctrain/train/trainer.py, _finish
# and evaluate; docs/training.md); the val_* ones only with a validation split. The built-in
# counter task (--counter) reports "loss".
TRAIN_METRICS = ("best_epoch",)
# val_r2/val_mse/val_mae: regression runs
TRAIN_VAL_METRICS = ("val_loss", "val_accuracy", "val_macro_f1", "val_r2", "val_mse", "val_mae")
COUNTER_METRICS = ("loss",)


@dataclass(frozen=True, slots=True)
class Dist:
    kind: str  # uniform | loguniform | int | choice
    args: tuple

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(*self.args)
        if self.kind == "loguniform":
            lo, hi = self.args
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if self.kind == "int":
            return rng.randint(*self.args)
        return rng.choice(self.args)


def _scalar(raw: str) -> Any:
    import yaml

    raw = raw.strip()
    for conv in (int, float):  # YAML 1.1 reads "1e-3" as a string
        try:
            return conv(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _split_kv(item: str, flag: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"{flag} {item!r}: expected key=..., e.g. {flag} optimizer.lr=1e-3,1e-2")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{flag} {item!r}: empty key")
    return key, raw


def check_trial_count(n: int, what: str) -> None:
    """ConfigError when a sweep asks for more than :data:`MAX_TRIALS` trials."""
    if n > MAX_TRIALS:
        raise ConfigError(f"{what} asks for {n} trials; a sweep has at most {MAX_TRIALS} (each trial is a run dir "
                          "and an index of one Slurm job array, and Slurm caps array indices at MaxArraySize, "
                          "by default 1001). Split it into several sweeps (--name) or narrow the search")


def parse_grid(items: list[str]) -> list[dict[str, Any]]:
    """``["a=1,2", "b=x,y"]`` -> the 4 points of the product, in order."""
    keys, values = [], []
    for item in items:
        key, raw = _split_kv(item, "--grid")
        if key in keys:
            raise ConfigError(f"--grid {item!r}: {key!r} is already an axis; give all its values in one --grid")
        vals = [_scalar(v) for v in raw.split(",") if v.strip() != ""]
        if not vals:
            raise ConfigError(f"--grid {item!r}: no values after '='")
        keys.append(key)
        values.append(vals)
    # the size first: the product is only built once it is known to be small
    check_trial_count(math.prod(len(v) for v in values),
                      "the grid (" + " x ".join(str(len(v)) for v in values) + " values)")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def parse_dist(key: str, raw: str) -> Dist:
    m = _DIST.match(raw)
    if not m:
        raise ConfigError(f"{key}={raw!r}: expected uniform(a,b), loguniform(a,b), int(a,b) or choice(x,y,...)")
    kind, inner = m.group(1), [_scalar(a) for a in m.group(2).split(",")]
    if kind == "choice":
        if not inner:
            raise ConfigError(f"{key}: choice() needs at least one value")
        return Dist(kind, tuple(inner))
    if len(inner) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in inner):
        raise ConfigError(f"{key}={raw!r}: {kind}() takes two numbers (low, high)")
    if not all(math.isfinite(a) for a in inner):
        raise ConfigError(f"{key}={raw!r}: {kind}() takes finite bounds, got {inner[0]!r} and {inner[1]!r}")
    lo, hi = inner
    if not lo < hi:
        raise ConfigError(f"{key}={raw!r}: low must be < high")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{key}={raw!r}: loguniform needs 0 < low")
    if kind == "int" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise ConfigError(f"{key}={raw!r}: int() takes integers")
    return Dist(kind, (lo, hi))


def parse_space(items: list[str]) -> dict[str, Dist]:
    space = {}
    for item in items:
        key, raw = _split_kv(item, "--random")
        space[key] = parse_dist(key, raw)
    return space


def sample_random(space: dict[str, Dist], n: int, seed: int) -> list[dict[str, Any]]:
    check_trial_count(n, f"--trials {n}")
    rng = random.Random(seed)
    return [{k: d.sample(rng) for k, d in space.items()} for _ in range(n)]


def _yaml_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v)
        mant, _, exp = text.partition("e")
        # YAML 1.1 (PyYAML) reads 1e-05 as a string: it wants a dot in the mantissa
        return f"{mant}.0e{exp}" if exp and "." not in mant else text
    if isinstance(v, (str, list, dict)):
        return json.dumps(v)
    return str(v)


def to_overrides(point: dict[str, Any]) -> list[str]:
    """``--set``-style overrides whose values read back (as YAML) to exactly ``point``."""
    return [f"{k}={_yaml_text(v)}" for k, v in point.items()]


# ---------------------------------------------------------------- sweep dir

# The sweep dir's layout and its record belong to hpctrain.rundir; these names stay importable here.
is_sweep_dir = rundir.is_sweep_dir
trial_dir = rundir.trial_dir
load_sweep = rundir.load_sweep
save_sweep = rundir.save_sweep


def trial_metric(run_dir: Path, metric: str) -> float | None:
    res = RunDir(run_dir).read_result()
    if res is None or res.get("status") != "completed":
        return None
    value = (res.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sweep_rows(sweep_dir: Path, *, live: bool = True) -> list[dict]:
    meta = load_sweep(sweep_dir)
    rows = []
    for t in meta["trials"]:
        d = trial_dir(sweep_dir, t["index"])
        st = run_status(d, live=live, tail=0)
        rows.append({"trial": t["index"], "state": st.state, **t["params"],
                     meta["metric"]: trial_metric(d, meta["metric"]), "reason": st.reason if st.state != "COMPLETED"
                     else ""})
    return rows


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r[metric])


def write_results(sweep_dir: Path, rows: list[dict]) -> Path:
    path = RunDir(sweep_dir).sweep_results
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path


def format_sweep(sweep_dir: Path, rows: list[dict]) -> str:
    meta = load_sweep(sweep_dir)
    metric, mode = meta["metric"], meta["mode"]
    keys = [k for k in (rows[0] if rows else {}) if k not in ("reason",)]
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    out = ["  ".join(k.ljust(widths[k]) for k in keys)]
    out += ["  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys) for r in rows]
    best = best_row(rows, metric, mode)
    done = sum(r["state"] == "COMPLETED" for r in rows)
    failed = sum(r["state"] in ("FAILED", "CANCELLED") for r in rows)
    out.append(f"{done} completed, {failed} failed, {len(rows) - done - failed} not finished")
    if best:
        params = {k: v for k, v in best.items() if k not in ("trial", "state", metric, "reason")}
        out.append(f"best: trial {best['trial']} {metric}={_fmt(best[metric])} ({mode}) with {params}")
    else:
        out.append(f"best: none yet (no completed trial reports {metric!r})")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)


# ---------------------------------------------------------------- submission

TaskFactory = Callable[[dict[str, Any], int], Any]  # (params, trial index) -> task


def submit_array(sub_template, sweep_dir: Path, points: list[dict], first_index: int, parallel: int | None,
                 make_task: TaskFactory) -> str:
    """One Slurm array for ``points`` (trial indices first_index...); each trial also gets a
    single-job submission of its own, so a crashed trial is retried alone."""
    base: JobSpec = sub_template.spec
    array_spec = dataclasses.replace(base, run_dir=Path(sweep_dir), array_size=len(points), array_offset=first_index,
                                     array_parallelism=min(parallel or len(points), len(points)))
    prepare_dirs(array_spec)
    jobs = []
    for k, point in enumerate(points):
        i = first_index + k
        d = trial_dir(sweep_dir, i)
        job = RunJob(run_dir=str(d), task=make_task(point, i), policy=sub_template.job.policy,
                     hold_at=sub_template.job.hold_at)
        spec_i = dataclasses.replace(base, name=f"{base.name}-t{i}", run_dir=d)
        prepare_dirs(spec_i)
        save_submission(Submission(spec=spec_i, job=job, retry=sub_template.retry, cluster="slurm"))
        jobs.append(job)
    ex = make_slurm_executor(array_spec)
    submitted = ex.submit_array(jobs)
    for k, sj in enumerate(submitted):
        journal.record(trial_dir(sweep_dir, first_index + k), "submitted", job_id=str(sj.job_id), attempt=0,
                       fresh=True)
    return str(submitted[0].job_id).split("_")[0]


def wait_trials(sweep_dir: Path, indices: list[int], *, timeout_s: float | None = None, poll_s: float = 3.0,
                on_update: Callable[[str], None] | None = None) -> None:
    t0 = time.monotonic()
    last = ""
    while True:
        states = {i: run_status(trial_dir(sweep_dir, i), tail=0).state for i in indices}
        summary = ", ".join(f"{s}={n}" for s, n in sorted(_count(states.values()).items()))
        if on_update and summary != last:
            on_update(summary)
            last = summary
        if all(s in journal.TERMINAL for s in states.values()):
            return
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise ClusterError(f"sweep {sweep_dir} not finished after {timeout_s:.0f} s ({summary}); "
                               f"run the same command again to keep waiting")
        time.sleep(poll_s)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def max_array_size(timeout: float = 20.0) -> int | None:
    """The cluster's MaxArraySize from ``scontrol show config``; None when Slurm does not say."""
    from hpctrain.slurm.runner import run_cmd

    try:
        res = run_cmd(["scontrol", "show", "config"], timeout=timeout)
    except ClusterError:
        return None
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)\s*$", res.stdout, re.MULTILINE) if res.ok else None
    return int(m.group(1)) if m else None


def check_array_indices(n_trials: int, limit: int | None) -> None:
    """Trial I is array index I, and Slurm refuses indices >= MaxArraySize: say so before submitting."""
    if limit is not None and n_trials > limit:
        raise ConfigError(f"the sweep has {n_trials} trials (array indices 0-{n_trials - 1}) but this cluster's "
                          f"MaxArraySize is {limit} (indices 0-{limit - 1}); run at most {limit} trials per sweep, "
                          "or ask the admins to raise MaxArraySize in slurm.conf")


def metric_names(*, counter: bool, val_split: bool) -> tuple[str, ...]:
    """The metrics a trial's result.json will report."""
    if counter:
        return COUNTER_METRICS
    return TRAIN_VAL_METRICS + TRAIN_METRICS if val_split else TRAIN_METRICS


def check_metric(metric: str, names: tuple[str, ...], *, val_split: bool = True) -> None:
    """ConfigError for a --metric no trial reports (the table could never rank the trials)."""
    if metric in names:
        return
    import difflib

    close = difflib.get_close_matches(metric, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    if not val_split and metric in TRAIN_VAL_METRICS:
        raise ConfigError(f"--metric {metric!r}: trials report it only with a validation split, and data.val_split "
                          "is null; set data.val_split (e.g. --set data.val_split=val)")
    raise ConfigError(f"--metric {metric!r}: the trials' result.json reports {', '.join(names)}.{hint}")


def journal_storage(sweep_dir: Path):
    """Optuna storage in a plain file of the sweep dir (works on NFS/Lustre; no server)."""
    from hpctrain.extras import require

    optuna = require("optuna", "a Bayesian sweep (--bayes)")

    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    path = str(RunDir(sweep_dir).optuna_journal)
    journal_mod = optuna.storages.journal
    if hasattr(journal_mod, "JournalFileBackend"):
        backend = journal_mod.JournalFileBackend(path, lock_obj=journal_mod.JournalFileOpenLock(path))
    else:  # optuna < 4: the same thing under its old name
        backend = optuna.storages.JournalFileStorage(path, lock_obj=optuna.storages.JournalFileOpenLock(path))
    return optuna.storages.JournalStorage(backend)


def optuna_distributions(space: dict[str, Dist]) -> dict:
    import optuna.distributions as od

    out = {}
    for k, d in space.items():
        if d.kind == "uniform":
            out[k] = od.FloatDistribution(*d.args)
        elif d.kind == "loguniform":
            out[k] = od.FloatDistribution(*d.args, log=True)
        elif d.kind == "int":
            out[k] = od.IntDistribution(*d.args)
        else:
            out[k] = od.CategoricalDistribution(list(d.args))
    return out
