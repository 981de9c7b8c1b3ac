"""What ``hpctrain submit`` (and every sweep) asks for, as typed values, and the one function
that turns it into a :class:`~hpctrain.slurm.submit.Submission` and submits it.

The CLI only parses flags into a :class:`SubmitRequest`; Python code builds one directly::

    from hpctrain.slurm.request import SubmitRequest, submit_run
    submit_run(SubmitRequest(config="run.yaml", job={"nodes": 2, "time": "4:00:00"}), wait=True)
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from hpctrain.errors import ClusterError, ConfigError
from hpctrain.fileio import atomic_path
from hpctrain.rundir import RunDir
from hpctrain.slurm.counter import CounterTask
from hpctrain.slurm.job import RunJob, TrainTask
from hpctrain.slurm.local import run_local
from hpctrain.slurm.requeue import RequeuePolicy
from hpctrain.slurm.retry import RetryPolicy
from hpctrain.slurm.sbatch import JobSpec, render_sbatch
from hpctrain.slurm.status import default_base, wait_run
from hpctrain.slurm.submit import Submission, active_job, submit_slurm
from hpctrain.slurm.wait import check_wait_options


@dataclass(kw_only=True)
class SubmitRequest:
    config: str | None = None          # the training config (YAML); None with ``counter``
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, in order
    name: str | None = None            # the run name (default: run.name of the config, or "counter")
    runs_dir: str | None = None        # the run dir is RUNS_DIR/<name> (see _check_runs_dir for configs)
    cluster: Literal["slurm", "local"] = "slurm"
    job: dict[str, Any] = field(default_factory=dict)  # JobSpec fields (sbatch.RESOURCE_FIELDS + QUEUE_FIELDS)
    requeue: RequeuePolicy = field(default_factory=RequeuePolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    counter: CounterTask | None = None  # the built-in smoke-test task instead of a config
    script: str | None = None          # a user's training script (hpctrain.session) instead of a config
    script_args: list[str] = field(default_factory=list)  # its arguments (after '--' on the command line)
    hold_at: int | None = None         # testing aid: see hpctrain.slurm.job.HoldForSignal

    def __post_init__(self) -> None:
        bad = sorted(set(self.job) & {"name", "run_dir", "signal", "signal_delay_s", "array_size", "array_offset",
                                      "array_parallelism", "begin"})
        if bad:
            raise ConfigError(f"SubmitRequest.job: {bad} are set by hpctrain itself (the name, run dir, signal "
                              "and array come from the request); leave them out")
        if self.script is not None and (self.config or self.counter is not None or self.overrides):
            raise ConfigError("--script runs your own script instead of a config: drop CONFIG.yaml, --counter and "
                              "--set (pass the script's own arguments after '--')")
        if self.script_args and self.script is None:
            raise ConfigError(f"unexpected arguments {self.script_args}; only --script takes arguments after '--'")
        if self.hold_at is not None and self.hold_at < 1:
            raise ConfigError(f"--test-hold-at must be >= 1 (a step boundary), got {self.hold_at}")


def _check_runs_dir(req: SubmitRequest, run_dir: Path) -> None:
    """--runs-dir places a config run at RUNS_DIR/<run.name>; a run.dir set in the config or by
    --set names another place, and neither may silently win."""
    from hpctrain.config import load_yaml

    run = load_yaml(req.config).get("run")
    in_config = isinstance(run, dict) and run.get("dir") is not None
    in_set = any(o.split("=", 1)[0].strip() == "run.dir" for o in req.overrides)
    if in_config or in_set:
        where = "--set run.dir" if in_set else f"run.dir in {req.config}"
        raise ConfigError(f"--runs-dir {req.runs_dir!r} and {where} ({str(run_dir)!r}) both say where the run "
                          f"goes; drop --runs-dir, or drop {where} to get {req.runs_dir}/<run.name>")


def build_submission(req: SubmitRequest, *, name: str | None = None, run_dir: str | Path | None = None,
                     task: Any = None) -> Submission:
    """The Submission of ``req``; pure apart from reading the config (which fails here, before any queue wait).

    ``name``, ``run_dir`` and ``task`` override what the request implies (sweeps use them).
    """
    cfg = None
    if task is None and req.script is not None:
        from hpctrain.slurm.script import ScriptTask

        task = ScriptTask.record(req.script, req.script_args)  # cwd and PYTHONPATH as seen here
        name = name or req.name or Path(req.script).stem
        base = Path(req.runs_dir) if req.runs_dir else default_base()
        run_dir = run_dir or base / name
    if task is None:
        if req.counter is not None:
            if req.config:
                raise ConfigError("give either CONFIG.yaml or --counter, not both")
            task = req.counter
            name = name or req.name or "counter"
            base = Path(req.runs_dir) if req.runs_dir else default_base()
            run_dir = run_dir or base / name
        else:
            if not req.config:
                raise ConfigError("no CONFIG.yaml given; usage: hpctrain submit CONFIG.yaml [options] "
                                  "(or --counter STEPS for a smoke test)")
            try:
                from hpctrain.train.config import load_config
            except ImportError as e:
                raise ConfigError(f"the trainer is not importable ({e}); reinstall hpctrain") from e
            overrides = list(req.overrides)
            if req.name:
                overrides.append(f"run.name={req.name}")
            cfg = load_config(req.config, overrides)
            name = name or cfg.run.name
            if req.runs_dir and run_dir is None:
                _check_runs_dir(req, cfg.run.dir)
                run_dir = Path(req.runs_dir) / cfg.run.name
            run_dir = run_dir or Path(cfg.run.dir)
            task = TrainTask(config=str(RunDir(Path(run_dir).resolve()).config_snapshot), overrides=overrides)
    run_dir = Path(run_dir).resolve()
    job = dict(req.job)
    # Every rank of these backends calls MPI_Init, a single one too, and a script's backend is
    # unknown here: under srun without a PMI plugin (the usual site default 'none') Open MPI
    # aborts, so ask for one whenever srun offers it. --mpi overrides.
    if (job.get("mpi") is None and req.cluster != "local"
            and ((cfg is not None and cfg.comm.backend in ("mpi", "horovod")) or req.script is not None)):
        from hpctrain.slurm.environment import auto_mpi_plugin

        job["mpi"] = auto_mpi_plugin()
    if cfg is not None and cfg.slurm.sbatch:
        from hpctrain.slurm.sbatch_options import merge, parse_cli, parse_mapping

        job["sbatch"] = merge(parse_mapping(cfg.slurm.sbatch), parse_cli(job.get("sbatch") or []))
    spec = JobSpec(name=name, run_dir=run_dir, signal=req.requeue.signal, signal_delay_s=req.requeue.signal_delay_s,
                   **job)
    return Submission(spec=spec, job=RunJob(run_dir=str(run_dir), task=task, policy=req.requeue,
                                            hold_at=req.hold_at),
                      retry=req.retry, cluster=req.cluster)


def submit_run(req: SubmitRequest, *, dry_run: bool = False, wait: bool = False, poll_s: float | None = None,
               wait_timeout: float | None = None, echo: Callable[[str], None] = print) -> int:
    """Submit (or with ``dry_run`` only render) ``req``; the exit code of ``hpctrain submit``.

    0 submitted (or already completed); with ``wait``, 0 once COMPLETED, 1 when it ended
    otherwise, 124 after ``wait_timeout``; ``--cluster local`` runs in the foreground (0 or 1).
    """
    # before anything is submitted: a bad --poll must not leave a job behind unwatched
    poll = check_wait_options(wait=wait, poll_s=poll_s, timeout_s=wait_timeout)
    if wait and dry_run:
        raise ConfigError("--dry-run submits nothing, so there is nothing to --wait for; drop one of them")
    if wait_timeout is not None and req.cluster == "local":
        raise ConfigError("--cluster local runs in the foreground until the run ends; --wait-timeout does not "
                          "apply there (use --cluster slurm, or drop it)")
    sub = build_submission(req)
    spec = sub.spec
    run = RunDir(spec.run_dir)
    if dry_run:
        echo(render_sbatch(spec).rstrip("\n"))
        return 0
    if run.is_completed():
        echo(f"run {spec.name!r} already completed ({run.result}); nothing to submit. "
             "Choose another --name to train again")
        return 0
    if sub.cluster == "slurm":
        live = active_job(spec.run_dir)
        if live:
            raise ClusterError(f"run {spec.name!r} already has job {live[0]} ({live[1]}); see 'hpctrain status "
                               f"{spec.run_dir}' (add --wait to wait for it) or 'hpctrain cancel {spec.run_dir}' "
                               "first")
    if isinstance(sub.job.task, TrainTask):
        with atomic_path(run.config_snapshot) as tmp:
            shutil.copyfile(req.config, tmp)
    if sub.cluster == "local":
        rc = run_local(sub, echo=echo)
        echo(f"run {spec.name!r}: {'COMPLETED' if rc == 0 else 'FAILED'}; see 'hpctrain status {spec.run_dir}'")
        return rc
    job_id = submit_slurm(sub)
    q = shlex.quote(str(spec.run_dir))
    echo(f"submitted run {spec.name!r} as job {job_id}; run dir {spec.run_dir}")
    echo(f"  hpctrain status {q}    hpctrain logs {q} -f    hpctrain cancel {q}")
    if not wait:
        return 0
    return wait_run(spec.run_dir, poll_s=poll, timeout_s=wait_timeout)
