"""``hpctrain launch``: run a command on N MPI ranks through mpirun, with the flags that
users otherwise rediscover by hand (root, oversubscription, binding, env pass-through).

The argv is built by a pure function and tested as text; :func:`launch` is the only
side effect.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from hpctrain.errors import LaunchError

# Variables forwarded to every rank (OpenMPI forwards nothing by default on remote nodes).
PASS_PREFIXES = ("HPCTRAIN_", "HOROVOD_", "NCCL_", "OMP_", "MKL_", "NUMBA_", "PYTHON", "TORCH_", "CUDA_", "HDF5_")
PASS_NAMES = ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV")


@dataclass(slots=True)
class LaunchSpec:
    """How to start the ranks."""

    np: int
    command: Sequence[str]
    hosts: str | None = None  # "n1:2,n2:2" as mpirun --host takes it
    oversubscribe: bool | None = None  # None: only when np exceeds the local cores
    bind_to: str = "none"  # torch threads do their own placement; core binding starves them
    extra_mpirun_args: Sequence[str] = ()
    pass_env: Sequence[str] = field(default_factory=tuple)
    mpirun: str = "mpirun"


# Variables that wire a process into its *own* MPI job. A process that initialised MPI as a
# singleton (any mpi4py/Horovod user, a notebook, a pytest run) has these in its C
# environment, and a child mpirun that inherits them joins the wrong job and fails
# silently. They are never meant for a new mpirun; user tuning (other OMPI_MCA_*) is kept.
_WIRING_PREFIXES = ("PMIX_", "PMI_", "OPAL_", "ORTE_", "OMPI_COMM_WORLD_", "OMPI_UNIVERSE_", "OMPI_APP_CTX_",
                    "OMPI_MCA_orte_", "OMPI_FILE_LOCATION", "OMPI_FIRST_RANKS", "OMPI_NUM_APP_CTX",
                    "OMPI_ARGV", "OMPI_COMMAND", "OMPI_MCA_initial_wdir")
_WIRING_NAMES = ("OMPI_MCA_ess", "OMPI_MCA_pmix", "HFI_NO_BACKTRACE", "IPATH_NO_BACKTRACE")


def without_mpi_wiring(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` minus the variables that tie a process to an existing MPI job."""
    return {k: v for k, v in environ.items() if not (k.startswith(_WIRING_PREFIXES) or k in _WIRING_NAMES)}


def default_pass_env(environ: Mapping[str, str]) -> list[str]:
    names = [k for k in environ if k.startswith(PASS_PREFIXES) or k in PASS_NAMES]
    return sorted(set(names))


def mpirun_argv(spec: LaunchSpec, *, cpu_count: int, as_root: bool) -> list[str]:
    """The exact mpirun argv for ``spec``. Pure: no environment or file access."""
    if spec.np < 1:
        raise LaunchError(f"-n must be at least 1, got {spec.np}")
    if not spec.command:
        raise LaunchError("no command given; usage: hpctrain launch -n N -- COMMAND [ARGS...]")
    argv = [spec.mpirun, "-np", str(spec.np)]
    if as_root:
        argv.append("--allow-run-as-root")
    oversub = spec.oversubscribe if spec.oversubscribe is not None else (spec.hosts is None and spec.np > cpu_count)
    if oversub:
        argv.append("--oversubscribe")
    if spec.hosts:
        argv += ["--host", spec.hosts]
    if spec.bind_to:
        argv += ["--bind-to", spec.bind_to]
    for name in spec.pass_env:
        argv += ["-x", name]
    argv += list(spec.extra_mpirun_args)
    argv += list(spec.command)
    return argv


def launch_env(environ: Mapping[str, str], *, as_root: bool) -> dict[str, str]:
    env = without_mpi_wiring(environ)
    if as_root:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # Containers often forbid the ptrace-based single-copy (CMA) path of the shared-memory
    # transport; OpenMPI then prints a warning per rank and falls back anyway.
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    # A rank that dies must take the job down, never leave the others in a collective.
    env.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "60")
    return env


def launch(spec: LaunchSpec, *, environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    mpirun = shutil.which(spec.mpirun, path=environ.get("PATH"))
    if mpirun is None:
        raise LaunchError(f"{spec.mpirun!r} not found on PATH; install OpenMPI "
                          "('apt-get install openmpi-bin' or 'module load openmpi'), or run scripts/setup.sh")
    as_root = os.geteuid() == 0
    env = launch_env(environ, as_root=as_root)
    if not spec.pass_env:
        spec.pass_env = default_pass_env(env)
    argv = mpirun_argv(spec, cpu_count=os.cpu_count() or 1, as_root=as_root)
    try:
        proc = subprocess.run(argv, env=env)
    except KeyboardInterrupt:
        return 130
    return proc.returncode


def python_command(module_args: Sequence[str]) -> list[str]:
    """``[sys.executable, ...]`` so ranks use the same interpreter (and venv) as the caller."""
    return [sys.executable, *module_args]
