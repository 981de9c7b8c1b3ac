"""The one seam through which every scheduler command runs.

Every ``sbatch``/``squeue``/``scontrol``/``scancel`` call goes through :func:`run_cmd`
with an argv list (never a shell string), so unit tests can swap the seam with
:func:`use_runner` and integration tests exercise the real commands.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from hpctrain.errors import ClusterError

_MISSING_HINT = {
    "scontrol": "inside a container, bind-mount Slurm's client commands (and /etc/slurm, the munge socket) "
                "or run this from the login node",
    "sbatch": "run 'hpctrain submit' on a Slurm login node, or use '--cluster local'",
}


@dataclass(frozen=True, slots=True)
class CmdResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Runner = Callable[[Sequence[str], float, "Mapping[str, str] | None"], CmdResult]


def _subprocess_runner(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None) -> CmdResult:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, shell=False,
                           env=None if env is None else dict(env))
    except FileNotFoundError:
        hint = _MISSING_HINT.get(argv[0], "install the Slurm client commands (apt: slurm-client) or load its module")
        raise ClusterError(f"{argv[0]!r} not found on PATH; {hint}") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(argv)!r} did not answer within {timeout:.0f} s; "
                           "is slurmctld up? check with 'scontrol ping'") from None
    return CmdResult(tuple(argv), p.returncode, p.stdout, p.stderr)


_runner: Runner = _subprocess_runner


def run_cmd(argv: Sequence[str], *, timeout: float = 60.0, check: bool = False,
            env: Mapping[str, str] | None = None) -> CmdResult:
    """Run a scheduler command; with ``check``, a non-zero exit raises ClusterError with its stderr."""
    if isinstance(argv, str):
        raise TypeError("run_cmd takes an argv list, not a shell string")
    res = _runner(tuple(str(a) for a in argv), timeout, env)
    if check and not res.ok:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise ClusterError(f"{' '.join(argv)!r} failed (exit {res.returncode}): {msg[-1] if msg else 'no output'}")
    return res


@contextlib.contextmanager
def use_runner(runner: Runner) -> Iterator[None]:
    """Swap the seam (tests): ``runner(argv, timeout, env) -> CmdResult``."""
    global _runner
    old, _runner = _runner, runner
    try:
        yield
    finally:
        _runner = old
