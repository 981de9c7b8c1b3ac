"""A run's logs: which file, the last lines, and following it until the run has ended."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from hpctrain.errors import ConfigError
from hpctrain.rundir import RunDir
from hpctrain.slurm import journal
from hpctrain.slurm.status import RunNotFound, run_status

# how often a follower asks whether the run has ended (a status read, maybe a scontrol call)
STATE_CHECK_S = 5.0


def log_path(run_dir: Path, *, rank: int = 0, batch: bool = False) -> Path:
    """The rank's log (or the batch script's); RunNotFound naming the logs there when it is absent."""
    run = RunDir(run_dir)
    path = run.batch_log if batch else run.rank_log(rank)
    if not path.is_file():
        have = sorted(p.name for p in run.logs.glob("*.log"))
        raise RunNotFound(f"{str(path)!r} does not exist (yet); logs in this run: {', '.join(have) or 'none'}. "
                          "A pending job has no log until it starts")
    return path


def show_log(run_dir: Path, *, rank: int = 0, batch: bool = False, lines: int = 0, follow: bool = False,
             write: Callable[[str], None], poll_s: float = 0.5,
             ended: Callable[[Path], bool] | None = None) -> int:
    """Write the log (its last ``lines``, or all of it); with ``follow``, keep writing what is
    appended until the run reaches a final state (journal.TERMINAL). Returns the exit code (0)."""
    if lines < 0:
        raise ConfigError(f"-n/--lines must be >= 0 (the last N lines; 0 shows the whole log), got {lines}")
    ended = ended or (lambda d: run_status(d, tail=0).state in journal.TERMINAL)
    path = log_path(run_dir, rank=rank, batch=batch)
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
        if lines:
            text = "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")
        write(text)
        if not follow:
            return 0
        last_check = 0.0
        while True:
            chunk = f.read()
            if chunk:
                write(chunk.decode("utf-8", "replace"))
                continue
            now = time.monotonic()
            if now - last_check > STATE_CHECK_S:
                last_check = now
                if ended(Path(run_dir)):
                    write(f.read().decode("utf-8", "replace"))
                    return 0
            time.sleep(poll_s)
