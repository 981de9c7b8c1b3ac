"""The sbatch script, as text, from one pure function.

``hpctrain submit --dry-run`` prints exactly what :func:`render_sbatch` returns, and the
executor submits exactly that, so the golden files in tests/golden/ pin what users get.
Quoting rules, checked against sbatch 22.05:

- ``#SBATCH`` values are double-quoted with ``\\"`` escapes (sbatch's own tokenizer);
- shell words use POSIX single quotes (:func:`shlex.quote`);
- ``%`` in a path is written ``%%`` where Slurm expands filename patterns (--output).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpctrain.errors import ConfigError
from hpctrain.rundir import LOGS, RunDir, trial_name
from hpctrain.slurm.environment import parse_time_limit
from hpctrain.slurm.requeue import DEFAULT_SIGNAL, DEFAULT_SIGNAL_DELAY_S, signal_number

_NAME_OK = re.compile(r"[^A-Za-z0-9._+-]")
_MEM = re.compile(r"^\d+[KMGT]?B?$", re.IGNORECASE)


@dataclass(kw_only=True, slots=True)
class JobSpec:
    """Everything the sbatch script says; built by `hpctrain submit`/`sweep`, rendered by render_sbatch."""

    # The resource and queue flags of hpctrain submit/sweep are generated from these fields
    # (hpctrain.config.add_flags, CLI_FIELDS): the defaults and help texts below are the only ones.
    name: str = field(metadata={"help": "run name; the job name is a Slurm-safe version of it"})
    run_dir: Path = field(metadata={"help": "absolute run dir, stable across requeues and retries"})
    nodes: int = field(default=1, metadata={"help": "nodes"})
    ntasks_per_node: int = field(default=1, metadata={"help": "ranks per node (one srun task each)"})
    gpus_per_node: int = field(default=0, metadata={"help": "GPUs per node"})
    cpus_per_task: int = field(default=1, metadata={"help": "CPUs per rank"})
    mem: str | None = field(default=None, metadata={"help": "memory per node, e.g. 32G"})
    time: str | None = field(default=None, metadata={"help": "time limit (Slurm syntax: MM, HH:MM:SS, D-HH:MM)"})
    partition: str | None = field(default=None, metadata={"help": "Slurm partition"})
    account: str | None = field(default=None, metadata={"help": "Slurm account"})
    qos: str | None = field(default=None, metadata={"help": "Slurm QOS"})
    constraint: str | None = field(default=None, metadata={"help": "node features (sbatch --constraint)"})
    exclusive: bool = field(default=False, metadata={"help": "whole nodes (sbatch --exclusive)"})
    # the same two as RequeuePolicy's, whose flags set both
    signal: str = DEFAULT_SIGNAL
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    array_size: int | None = field(default=None, metadata={"help": "job array of this many trials (sweeps)"})
    array_parallelism: int | None = field(default=None, metadata={"help": "at most this many trials at once (%P)"})
    array_offset: int = field(default=0, metadata={"help": "index of the first trial (Bayesian waves continue)"})
    begin: str | None = field(default=None, metadata={"help": "sbatch --begin (retry backoff), e.g. now+30"})
    setup: list[str] = field(default_factory=list, metadata={
        "metavar": "LINE", "help": "shell line run before srun, e.g. 'module load cuda' (repeatable)"})
    mpi: str | None = field(default=None, metadata={
        "help": "srun --mpi plugin for comm.backend mpi/horovod (default: pmix when several ranks and "
                "'srun --mpi=list' offers it; with the site default 'none' MPI_Init aborts); comm.backend torch "
                "needs none"})
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if not self.run_dir.is_absolute():
            raise ConfigError(f"run dir {str(self.run_dir)!r} must be absolute (the job may start elsewhere)")
        check_path(self.run_dir, "run dir")
        for attr in ("nodes", "ntasks_per_node", "cpus_per_task"):
            if getattr(self, attr) < 1:
                raise ConfigError(f"--{attr.replace('_', '-')} must be >= 1, got {getattr(self, attr)}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.mem is not None and not _MEM.match(self.mem):
            raise ConfigError(f"--mem {self.mem!r} is not a Slurm size; expected e.g. 16G or 4000M")
        signal_number(self.signal)
        if self.time is not None:
            try:
                limit = parse_time_limit(self.time)
            except ValueError:
                raise ConfigError(f"--time {self.time!r} is not a Slurm duration; expected MM, HH:MM:SS or "
                                  "D-HH:MM") from None
            if limit is not None and limit <= self.signal_delay_s:
                raise ConfigError(f"--time {self.time} ({limit} s) is not longer than --signal-delay "
                                  f"{self.signal_delay_s} s: the job would be signalled at once; "
                                  "raise --time or lower --signal-delay")
        if self.array_size is not None and self.array_size < 1:
            raise ConfigError(f"a sweep needs at least one trial, got {self.array_size}")
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise ConfigError(f"--parallel must be >= 1, got {self.array_parallelism}")
        if self.mpi is not None and not re.fullmatch(r"[A-Za-z0-9_]+", self.mpi):
            raise ConfigError(f"--mpi {self.mpi!r} is not an srun MPI plugin name; see 'srun --mpi=list'")
        for name in ("partition", "account", "qos", "constraint", "begin"):
            value = getattr(self, name)
            if value is not None and ("\n" in value or not value.strip()):
                raise ConfigError(f"--{name} {value!r} is empty or holds a newline")
        for line in self.setup:
            if "\n" in line:
                raise ConfigError(f"setup line {line!r} holds a newline; pass one line per --setup")

    @property
    def job_name(self) -> str:
        return slurm_name(self.name)

    @property
    def submitit_dir(self) -> Path:
        return RunDir(self.run_dir).submitit


# JobSpec fields that are command-line flags ("resources" and "queue"); the rest are derived
RESOURCE_FIELDS = ("nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task", "mem")
QUEUE_FIELDS = ("time", "partition", "account", "qos", "constraint", "exclusive", "mpi", "setup")


def check_path(path: Path, what: str) -> None:
    s = str(path)
    if "\n" in s or "\r" in s or "\0" in s:
        raise ConfigError(f"{what} {s!r} holds a newline or NUL; Slurm cannot write logs there. Choose another path")
    if "\\" in s:
        raise ConfigError(f"{what} {s!r} holds a backslash, which Slurm reads as 'no pattern expansion' in log "
                          "paths; choose a path without one")


def slurm_name(name: str) -> str:
    """A job name without quotes, spaces or shell characters (squeue columns stay readable)."""
    cleaned = _NAME_OK.sub("_", name).strip("_") or "hpctrain"
    return cleaned[:64]


def sbatch_value(value: object) -> str:
    """A value as sbatch reads it on a ``#SBATCH`` line."""
    s = str(value)
    if re.fullmatch(r"[A-Za-z0-9._,:=+@/%-]+", s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pattern_path(path: Path | str) -> str:
    """A literal path inside a Slurm filename pattern: ``%`` doubled."""
    return str(path).replace("%", "%%")


def rank_log_pattern(spec: JobSpec) -> str:
    if spec.array_size is not None:
        return pattern_path(RunDir(spec.run_dir).trials) + f"/{trial_name('%a')}/{LOGS}/rank-%t.log"
    return pattern_path(RunDir(spec.run_dir).logs) + "/rank-%t.log"


def batch_log_pattern(spec: JobSpec) -> str:
    if spec.array_size is not None:
        return pattern_path(RunDir(spec.run_dir).logs) + "/batch-%A_%a.log"
    return pattern_path(RunDir(spec.run_dir).batch_log)


def render_sbatch(spec: JobSpec) -> str:
    """The complete batch script for ``spec`` (pure: no clock, no environment, no files)."""
    opts: list[tuple[str, object]] = [("job-name", spec.job_name), ("nodes", spec.nodes),
                                      ("ntasks-per-node", spec.ntasks_per_node),
                                      ("cpus-per-task", spec.cpus_per_task)]
    if spec.gpus_per_node:
        opts.append(("gpus-per-node", spec.gpus_per_node))
    for key in ("mem", "time", "partition", "account", "qos", "constraint", "begin"):
        value = getattr(spec, key)
        if value is not None:
            opts.append((key, value))
    if spec.array_size is not None:
        par = f"%{spec.array_parallelism}" if spec.array_parallelism else ""
        first = spec.array_offset
        opts.append(("array", f"{first}-{first + spec.array_size - 1}{par}"))
    opts += [("signal", f"{spec.signal.upper().removeprefix('SIG')}@{spec.signal_delay_s}"),
             ("output", batch_log_pattern(spec)), ("open-mode", "append")]
    lines = ["#!/bin/bash", f"# hpctrain run {spec.name!r}: written by hpctrain submit; see docs/slurm.md"]
    lines += [f"#SBATCH --{k}={sbatch_value(v)}" for k, v in opts]
    if spec.exclusive:
        lines.append("#SBATCH --exclusive")
    lines.append("#SBATCH --requeue")
    lines.append("")
    if spec.setup:
        lines.append("# site setup")
        lines += list(spec.setup)
        lines.append("")
    py = shlex.quote(spec.python)
    if spec.array_size is not None:
        trial = trial_name('"$SLURM_ARRAY_TASK_ID"')
        lines.append(f"run_dir={shlex.quote(str(RunDir(spec.run_dir).trials))}/{trial}")
    else:
        lines.append(f"run_dir={shlex.quote(str(spec.run_dir))}")
    lines += [
        "export SUBMITIT_EXECUTOR=slurm",
        f"export SUBMITIT_PREEMPT_SIGNAL={spec.signal.upper().removeprefix('SIG')}",
        # the ranks catch the signal; without a trap a stray one would kill this shell
        f"trap 'echo \"hpctrain: batch shell got {spec.signal}; the ranks checkpoint\"' "
        f"{spec.signal.upper().removeprefix('SIG')}",
        "",
        "# one task per rank; one dead rank ends the step",
        *([] if spec.mpi else ["# comm.backend mpi/horovod: submit with --mpi pmix (see 'srun --mpi=list')"]),
        " ".join(["srun", "--kill-on-bad-exit=1", "--unbuffered", *([f"--mpi={spec.mpi}"] if spec.mpi else []),
                  f"--output={shlex.quote(rank_log_pattern(spec))}",
                  py, "-u", "-m", "submitit.core._submit", shlex.quote(str(spec.submitit_dir))]),
        "rc=$?",
        "",
        "# completed, requeued, retried (with backoff) or failed: decided from the run dir, not from rc alone",
        f"{py} -m hpctrain.slurm.after_step --run-dir \"$run_dir\" --exit-code \"$rc\"",
        "",
    ]
    return "\n".join(lines)
