"""The one owner of a run directory's layout: every path in it and every reader/writer of its files.

A run dir is the contract between the trainer (which writes it), the Slurm layer (which
submits, requeues and retries into it), the CLI (status, logs, cancel, sweep) and
prediction. Nothing else spells a file name of it::

    RUN/
      config.resolved.json    the resolved training config and the placement of the ranks
      metrics.jsonl           one record per logged step (rank 0)
      result.json             written last, when the run completed (rank 0)
      checkpoints/            hpctrain.train.checkpoint's files and "latest" pointer; final.pt at the end
      tb/                     TensorBoard events (optional)
      plots/                  PNG plots of the finished run (optional)
      monitor/rank-R.jsonl    rank R's resource and step-timing samples and its alerts (hpctrain.monitor)
      monitor/timeline.json   Horovod's timeline (comm.timeline: true)
      monitor/horovod_autotune.csv  what HOROVOD_AUTOTUNE tried and scored (comm.horovod_autotune: true)
      monitor/plots/          'hpctrain monitor' PNG timelines, one per rank
      logs/rank-R.log         per-rank output (srun, or the local executor)
      logs/batch.log          the batch script's own output
      slurm/config.yaml       the config snapshot a submitted run trains from
      slurm/submission.pkl    what a retry resubmits (spec, job callable, retry policy)
      slurm/spec.json         the same, readable
      slurm/events.jsonl      the run's event journal (hpctrain.slurm.journal)
      slurm/submitit/         submitit's pickles and batch scripts
      slurm/pids/             the pid of each rank of the current attempt
      slurm/held              a --test-hold-at job is waiting for its signal (once per run)
    SWEEP/
      sweep.json              the sweep's record of trials and jobs
      results.csv             its table
      optuna.journal          Optuna's storage (--bayes)
      trials/trial-I/         one ordinary run dir per trial

Pure path arithmetic plus small readers and atomic writers; no heavy import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from hpctrain.errors import ConfigError, HpctrainError
from hpctrain.fileio import atomic_write_json

PathLike = Union[str, "os.PathLike[str]"]

RESULT = "result.json"
METRICS = "metrics.jsonl"
RESOLVED = "config.resolved.json"
CHECKPOINTS = "checkpoints"
FINAL_CHECKPOINT = "final.pt"
TENSORBOARD = "tb"
PLOTS = "plots"
MONITOR = "monitor"
SUBMITIT = "slurm/submitit"
LOGS = "logs"
CONFIG_SNAPSHOT = "slurm/config.yaml"
SUBMISSION = "slurm/submission.pkl"
SPEC = "slurm/spec.json"
EVENTS = "slurm/events.jsonl"
PIDS = "slurm/pids"
SWEEP = "sweep.json"
SWEEP_RESULTS = "results.csv"
OPTUNA_JOURNAL = "optuna.journal"
TRIALS = "trials"


def trial_name(index: int | str) -> str:
    """The directory name of trial ``index``; a str index is a Slurm pattern such as ``%a``."""
    return f"trial-{index}"


class ResultError(HpctrainError):
    """result.json is missing (``missing``), unreadable or not the object the trainer writes."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def _dict_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class RunDir:
    """A run (or sweep) directory. Properties are paths only: they never touch the disk."""

    path: Path

    def __init__(self, path: PathLike | RunDir) -> None:
        object.__setattr__(self, "path", path.path if isinstance(path, RunDir) else Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------- training outputs
    @property
    def result(self) -> Path:
        return self.path / RESULT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def resolved(self) -> Path:
        return self.path / RESOLVED

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def final_checkpoint(self) -> Path:
        """The completed run's weights (prediction reads these first)."""
        return self.checkpoints / FINAL_CHECKPOINT

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    # ---------------------------------------------------------------- monitoring
    @property
    def monitor(self) -> Path:
        return self.path / MONITOR

    def monitor_samples(self, rank: int) -> Path:
        return self.monitor / f"rank-{rank}.jsonl"

    def monitor_files(self) -> list[Path]:
        """The ranks' sample files present on disk, in rank order."""
        def rank_of(p: Path) -> int:
            try:
                return int(p.stem.split("-", 1)[1])
            except (IndexError, ValueError):
                return 1 << 30
        return sorted(self.monitor.glob("rank-*.jsonl"), key=rank_of)

    @property
    def timeline(self) -> Path:
        return self.monitor / "timeline.json"

    @property
    def horovod_autotune(self) -> Path:
        return self.monitor / "horovod_autotune.csv"

    @property
    def monitor_plots(self) -> Path:
        return self.monitor / "plots"

    # ---------------------------------------------------------------- logs
    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    @property
    def batch_log(self) -> Path:
        """The batch script's output of a single run (an array's is ``batch-JOB_INDEX.log``)."""
        return self.logs / "batch.log"

    # ---------------------------------------------------------------- submission records
    @property
    def config_snapshot(self) -> Path:
        return self.path / CONFIG_SNAPSHOT

    @property
    def submission(self) -> Path:
        return self.path / SUBMISSION

    @property
    def spec(self) -> Path:
        return self.path / SPEC

    @property
    def submitit(self) -> Path:
        """submitit's folder: the pickled job and the batch script of each submission."""
        return self.path / SUBMITIT

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def pids(self) -> Path:
        return self.path / PIDS

    def pid_file(self, rank: int) -> Path:
        return self.pids / f"rank-{rank}.pid"

    @property
    def hold_marker(self) -> Path:
        """Written when a job submitted with ``--test-hold-at`` starts waiting for its signal."""
        return self.path / "slurm" / "held"

    # ---------------------------------------------------------------- sweeps
    @property
    def sweep(self) -> Path:
        return self.path / SWEEP

    @property
    def sweep_results(self) -> Path:
        return self.path / SWEEP_RESULTS

    @property
    def optuna_journal(self) -> Path:
        return self.path / OPTUNA_JOURNAL

    @property
    def trials(self) -> Path:
        return self.path / TRIALS

    def trial(self, index: int) -> RunDir:
        return RunDir(self.trials / trial_name(index))

    def trial_dirs(self) -> list[Path]:
        """The trial dirs present on disk, in name order."""
        return sorted(self.trials.glob(trial_name("*")))

    # ---------------------------------------------------------------- what kind of dir
    def is_sweep(self) -> bool:
        return self.sweep.is_file()

    def is_run_dir(self) -> bool:
        """Made by hpctrain submit or sweep (an event journal, a submission or a sweep record)."""
        return self.events.is_file() or self.submission.is_file() or self.is_sweep()

    # ---------------------------------------------------------------- readers and writers
    def load_result(self) -> dict:
        """result.json, strictly: :class:`ResultError` saying why when it is not a readable object."""
        path = self.result
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ResultError(f"{str(self.path)!r} has no {RESULT}: the run has not completed "
                              "(check it with 'hpctrain status', or resume it)", missing=True) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultError(f"{str(path)!r} is unreadable ({e}); re-run or repair the training run",
                              missing=False) from None
        if not isinstance(result, dict):
            raise ResultError(f"{str(path)!r} holds a {type(result).__name__}, not the JSON object "
                              "'hpctrain train' writes; re-run or repair the training run", missing=False)
        return result

    def read_result(self) -> dict | None:
        """result.json as a dict; None when absent or unreadable (a run still going)."""
        try:
            return self.load_result()
        except ResultError:
            return None

    def write_result(self, result: dict[str, Any]) -> None:
        """Atomically: a reader sees the previous state or the whole result, never half."""
        atomic_write_json(self.result, result)

    def is_completed(self) -> bool:
        res = self.read_result()
        return res is not None and res.get("status") == "completed"

    def read_resolved(self) -> dict | None:
        return _dict_json(self.resolved)

    def write_resolved(self, resolved: dict[str, Any]) -> None:
        atomic_write_json(self.resolved, resolved)

    def placement(self) -> list[dict] | None:
        """The ranks of the latest attempt (config.resolved.json's cluster.ranks), if recorded."""
        resolved = self.read_resolved()
        try:
            ranks = resolved["cluster"]["ranks"]  # type: ignore[index]
        except (TypeError, KeyError):
            return None
        return ranks if isinstance(ranks, list) else None

    def make_dirs(self) -> None:
        """The directories a submission needs before any rank starts."""
        self.logs.mkdir(parents=True, exist_ok=True)


def is_run_dir(path: PathLike) -> bool:
    return RunDir(path).is_run_dir()


def read_result(run_dir: PathLike) -> dict | None:
    return RunDir(run_dir).read_result()


def is_completed(run_dir: PathLike) -> bool:
    return RunDir(run_dir).is_completed()


def is_sweep_dir(path: PathLike) -> bool:
    return RunDir(path).is_sweep()


def trial_dir(sweep_dir: PathLike, index: int) -> Path:
    """The one place a trial's run dir is named (the batch script's pattern uses :func:`trial_name`)."""
    return RunDir(sweep_dir).trial(index).path


def load_sweep(sweep_dir: PathLike) -> dict:
    """The sweep's record; ConfigError naming the file when it is damaged (a full disk, an editor)."""
    path = RunDir(sweep_dir).sweep
    fix = (f"the sweep's record of its trials and jobs is damaged. Restore it from a backup, or remove "
           f"{str(sweep_dir)!r} and run the sweep again (each trial's own run dir is under trials/)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not UTF-8 text (byte {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                          f"{fix}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    ok = (isinstance(meta, dict) and isinstance(meta.get("trials"), list) and isinstance(meta.get("job_ids"), list)
          and isinstance(meta.get("metric"), str) and meta.get("mode") in ("min", "max")
          and all(isinstance(t, dict) and isinstance(t.get("index"), int) and isinstance(t.get("params"), dict)
                  for t in meta["trials"]))
    if not ok:
        raise ConfigError(f"{str(path)!r} is not a sweep record (expected an object with 'trials' (each with "
                          f"'index' and 'params'), 'job_ids', 'metric' and 'mode'); {fix}")
    return meta


def save_sweep(sweep_dir: PathLike, meta: dict) -> None:
    atomic_write_json(RunDir(sweep_dir).sweep, meta)
