"""Bayesian sweeps: Optuna's ask/tell loop over waves of Slurm array trials.

Optuna's storage is a journal file in the sweep dir (no database server); a failed trial is
told as FAIL, never fatal; a cancelled sweep starts no further wave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hpctrain.slurm import journal
from hpctrain.slurm.sweep import (Dist, TaskFactory, journal_storage, optuna_distributions, save_sweep, submit_array,
                                  trial_dir, trial_metric, wait_trials)


def _cancelled(sweep_dir: Path) -> bool:
    return any(e.get("event") == "cancelled" for e in journal.read_events(sweep_dir))


def run_bayes(sub, sweep_dir: Path, meta: dict, space: dict[str, Dist], make_task: TaskFactory, *, trials: int,
              parallel: int | None, seed: int, mode: str, wait_timeout: float | None,
              say: Callable[[str], None]) -> None:
    """Ask Optuna for waves of ``parallel`` points, run each wave as an array, tell it the results.

    ``meta`` is the sweep record, saved after every change, so a rerun resumes where this stopped.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=meta["name"], storage=journal_storage(sweep_dir), load_if_exists=True,
                                direction="minimize" if mode == "min" else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    dists = optuna_distributions(space)
    wave = max(1, min(parallel or 1, trials))
    while True:
        untold = [t for t in meta["trials"] if not t.get("told")]
        if untold:
            wait_trials(sweep_dir, [t["index"] for t in untold], timeout_s=wait_timeout,
                        on_update=lambda s: say(f"  wave: {s}"))
            for t in untold:
                value = trial_metric(trial_dir(sweep_dir, t["index"]), meta["metric"])
                if value is None:
                    study.tell(t["number"], state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(t["number"], value)
                t["told"] = True
            save_sweep(sweep_dir, meta)
        if len(meta["trials"]) >= trials:
            return
        if _cancelled(sweep_dir):  # 'hpctrain cancel' stopped this wave's jobs: no further waves
            say(f"sweep {meta['name']!r} was cancelled ('hpctrain cancel'): no further waves after "
                f"{len(meta['trials'])} of {trials} trials; start a new sweep (--name) to go on")
            return
        k = min(wave, trials - len(meta["trials"]))
        asked = [study.ask(dists) for _ in range(k)]
        first = len(meta["trials"])
        new = [{"index": first + j, "number": tr.number, "params": dict(tr.params)} for j, tr in enumerate(asked)]
        meta["trials"] += new
        save_sweep(sweep_dir, meta)
        job = submit_array(sub, sweep_dir, [t["params"] for t in new], first, k, make_task)
        meta["job_ids"].append(job)
        save_sweep(sweep_dir, meta)
        say(f"bayes wave: trials {first}-{first + k - 1} as array job {job}")
