"""``hpctrain doctor``: one row per part of the stack, with ok/missing and the fix.

Each probe is a small function returning a :class:`Check`; a probe never raises. The
heavy imports happen inside the probes, so a broken optional part shows as a row, not a
traceback.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # required for local (mpirun) training


def _run(argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer in {timeout:.0f} s"
    return p.returncode, (p.stdout + p.stderr).strip()


SETUP_FIX = "run scripts/setup.sh (see docs/install.md)"


def check_python() -> Check:
    return Check("python", True, f"{platform.python_version()} ({platform.python_implementation()})")


def check_torch() -> Check:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure is a finding
        return Check("torch", False, f"import failed: {e}",
                     "pip install torch==2.13.0 (or HPCTRAIN_TORCH=... scripts/setup.sh)")
    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else \
        ("CUDA build, no device visible" if torch.version.cuda else "CPU build")
    return Check("torch", True, f"{torch.__version__} ({cuda})")


def check_horovod() -> Check:
    try:
        import horovod.torch as hvd
    except Exception as e:  # noqa: BLE001
        return Check("horovod", False, f"import failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                     "scripts/setup.sh builds Horovod 0.28.1 with MPI (patched to C++17)")
    import horovod

    parts = [f"MPI {'yes' if hvd.mpi_built() else 'no'}", f"NCCL {'yes' if hvd.nccl_built() else 'no'}",
             f"Gloo {'yes' if hvd.gloo_built() else 'no'}"]
    ok = bool(hvd.mpi_built())
    return Check("horovod", ok, f"{horovod.__version__} ({', '.join(parts)})",
                 "" if ok else "rebuild with HOROVOD_WITH_MPI=1: rm the cached wheel and run scripts/setup.sh")


def check_mpi4py() -> Check:
    try:
        from mpi4py import MPI
    except Exception as e:  # noqa: BLE001
        return Check("mpi4py", False, f"import failed: {e}", "pip install --no-binary mpi4py mpi4py (needs mpicc)")
    import mpi4py

    lib = MPI.Get_library_version().splitlines()[0].strip()
    return Check("mpi4py", True, f"{mpi4py.__version__}; {lib}")


def check_mpirun() -> Check:
    path = shutil.which("mpirun")
    if not path:
        return Check("mpirun", False, "not on PATH", "apt-get install openmpi-bin, or 'module load openmpi'")
    rc, out = _run([path, "--version"])
    return Check("mpirun", rc == 0, f"{path}: {out.splitlines()[0] if out else rc}")


def check_h5py() -> Check:
    try:
        import h5py
    except Exception as e:  # noqa: BLE001
        return Check("h5py", False, f"import failed: {e}", "pip install h5py")
    par = "parallel" if h5py.get_config().mpi else "serial"
    return Check("h5py", True, f"{h5py.__version__}; HDF5 {h5py.version.hdf5_version} ({par})")


def check_numba() -> Check:
    try:
        import numba
    except Exception as e:  # noqa: BLE001
        return Check("numba", False, f"import failed: {e}", "pip install numba")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        mode = "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    else:
        try:
            from numba import cuda

            if cuda.is_available():
                name = cuda.get_current_device().name
                mode = f"CUDA device: {name.decode() if isinstance(name, bytes) else name}"
            else:
                mode = "no CUDA device; CUDA kernels run under NUMBA_ENABLE_CUDASIM=1"
        except Exception as e:  # noqa: BLE001
            mode = f"no CUDA ({str(e).splitlines()[0][:80]}); simulator available"
    return Check("numba", True, f"{numba.__version__}; {mode}")


def check_submitit() -> Check:
    try:
        import submitit
    except Exception as e:  # noqa: BLE001
        return Check("submitit", False, f"import failed: {e}", "pip install submitit", required=False)
    return Check("submitit", True, submitit.__version__, required=False)


def check_serve() -> Check:
    """export/compress/serve: the [serve] extra."""
    import importlib.metadata as md

    found, missing = [], []
    for pkg in ("safetensors", "uvicorn", "starlette", "prometheus-client"):
        try:
            found.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            missing.append(pkg)
    if missing:
        return Check("serve", False, f"missing {', '.join(missing)} (hpctrain export/compress/serve)",
                     "pip install -e '.[serve]' (scripts/setup.sh installs it)", required=False)
    return Check("serve", True, ", ".join(found), required=False)


def check_slurm_commands() -> Check:
    names = ["sbatch", "srun", "squeue", "scontrol", "scancel"]
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        return Check("slurm commands", False, f"missing: {', '.join(missing)}",
                     "apt-get install slurm-client (or 'module load slurm'); not needed for mpirun runs",
                     required=False)
    rc, out = _run(["sbatch", "--version"])
    return Check("slurm commands", True, out.splitlines()[0] if out else "present", required=False)


def check_slurm_controller() -> Check:
    if not shutil.which("scontrol"):
        return Check("slurm controller", False, "scontrol not on PATH", "install Slurm client tools", required=False)
    rc, out = _run(["scontrol", "ping"], timeout=10)
    up = rc == 0 and "UP" in out
    return Check("slurm controller", up, out.replace("\n", "; ")[:120] or f"scontrol ping exit {rc}",
                 "" if up else "start the local cluster: scripts/local-cluster.sh start", required=False)


def check_gpus() -> Check:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return Check("GPUs", True, "none visible (CPU ranks will be used)", required=False)
    rc, out = _run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"])
    if rc != 0:
        return Check("GPUs", False, f"nvidia-smi failed: {out[:120]}", "check the driver (nvidia-smi)", required=False)
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    return Check("GPUs", True, f"{len(gpus)}: {'; '.join(gpus)}", required=False)


PROBES: list[Callable[[], Check]] = [
    check_python, check_torch, check_horovod, check_mpi4py, check_mpirun, check_h5py, check_numba,
    check_submitit, check_serve, check_slurm_commands, check_slurm_controller, check_gpus,
]


def run_checks() -> list[Check]:
    results = []
    for probe in PROBES:
        try:
            results.append(probe())
        except Exception as e:  # noqa: BLE001 - a probe must never crash the report
            name = probe.__name__.removeprefix("check_")
            results.append(Check(name, False, f"probe crashed: {type(e).__name__}: {e}", SETUP_FIX))
    return results


def format_table(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        status = "ok" if c.ok else ("MISSING" if c.required else "missing")
        line = f"{c.name:<{w}}  {status:<7}  {c.detail}"
        if not c.ok and c.fix:
            line += f"\n{'':<{w}}  {'':<7}  fix: {c.fix}"
        lines.append(line)
    return "\n".join(lines)


def healthy(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)
