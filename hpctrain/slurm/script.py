"""A user's own training script as the task of a submitted job (``hpctrain submit --script``).

The script runs in each rank's process (``runpy``, as ``__main__``) inside :class:`RunJob`,
so it gets the same requeue, retry and status machinery as a config run. What a job on a
compute node needs to find the user's code is recorded at submission: the working directory,
the script's path and arguments, and ``PYTHONPATH`` (plus the script's own directory, which
``python script.py`` would put first on ``sys.path``).

The script talks to the job through :func:`hpctrain.session`: the session takes the job's run
dir and the job's preemption flag (no signal handler of its own), writes ``result.json`` when
it ends cleanly, and raises :class:`hpctrain.Preempted` after its checkpoint, which this task
turns into "interrupted" so that rank 0 requeues.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hpctrain.errors import ConfigError, HpctrainError


class ScriptFailed(HpctrainError):
    """The script exited with a non-zero status (retried like a crash: it may be transient)."""

    transient = True


@dataclass(kw_only=True)
class ScriptTask:
    script: str  # absolute path
    args: list[str] = field(default_factory=list)
    cwd: str = "."
    pythonpath: list[str] = field(default_factory=list)

    @classmethod
    def record(cls, script: str | os.PathLike, args: list[str], *, cwd: str | None = None,
               env: dict[str, str] | None = None) -> ScriptTask:
        """The task for ``script`` as seen from here (the submitting shell): paths made absolute."""
        env = os.environ if env is None else env
        cwd = os.path.abspath(cwd or os.getcwd())
        path = Path(cwd, script).resolve()
        if not path.is_file():
            raise ConfigError(f"--script {str(script)!r}: no such file (looked at {str(path)!r}); give the path of "
                              "your training script")
        if path.suffix != ".py":
            raise ConfigError(f"--script {str(script)!r}: expected a Python file (.py); for another program use an "
                              "sbatch script (see slurm/ and docs/slurm.md)")
        entries = [str(path.parent)]
        for p in env.get("PYTHONPATH", "").split(os.pathsep):
            if p:
                full = os.path.abspath(os.path.join(cwd, p))
                if full not in entries:
                    entries.append(full)
        return cls(script=str(path), args=list(args), cwd=cwd, pythonpath=entries)

    def describe(self) -> str:
        import shlex

        return (f"{shlex.join(['python', self.script, *self.args])} (cwd {self.cwd}; PYTHONPATH "
                f"{os.pathsep.join(self.pythonpath)})")

    def __call__(self, run_dir: Path, stop_requested: Callable[[], bool]) -> str:
        import runpy

        from hpctrain import userloop

        if not Path(self.script).is_file():
            raise ConfigError(f"the job's script {self.script!r} does not exist on {os.uname().nodename}; the "
                              "cluster's nodes must see the directory it was submitted from")
        os.chdir(self.cwd)
        for p in reversed(self.pythonpath):
            if p not in sys.path:
                sys.path.insert(0, p)
        # for processes the script starts (data workers, subprocesses) as well
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in self.pythonpath]
        os.environ["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *rest])
        os.environ["HPCTRAIN_RUN_DIR"] = str(run_dir)
        host = userloop._Host(run_dir=Path(run_dir), stop_requested=stop_requested)
        userloop._HOST = host
        saved_argv = sys.argv
        sys.argv = [self.script, *self.args]
        try:
            runpy.run_path(self.script, run_name="__main__")
        except userloop.Preempted:
            return "interrupted"
        except SystemExit as e:
            if e.code not in (0, None):
                raise ScriptFailed(f"{self.describe()} exited with status {e.code}") from None
        finally:
            sys.argv = saved_argv
            userloop._HOST = None
        if host.session is None:
            # no session: the script's own business how it resumes; that it returned means done
            _mark_completed(Path(run_dir))
        return "completed"


def _mark_completed(run_dir: Path) -> None:
    from hpctrain.env import rank_info
    from hpctrain.rundir import RunDir

    if rank_info().is_root:
        RunDir(run_dir).write_result({"status": "completed"})
