"""Starting 'hpctrain' under a real mpirun from a test, and finding and watching its ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HPCTRAIN = [sys.executable, "-m", "hpctrain"]


def mpirun(n: int, cmd: list[str]) -> list[str]:
    from hpctrain.launch import LaunchSpec, mpirun_argv

    return mpirun_argv(LaunchSpec(np=n, command=cmd, oversubscribe=True), cpu_count=os.cpu_count() or 1,
                       as_root=os.geteuid() == 0)


_KEEP = ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "OMPI_MCA_btl_vader_single_copy_mechanism")


def without_mpi_vars(env: dict) -> dict:
    # An MPI singleton started earlier in this pytest process (another test's mpi4py import)
    # leaves OMPI_*/PMIX_* variables in os.environ that point at its own daemon; a child
    # mpirun or srun that inherits them joins the wrong job, and the singleton then hangs in
    # MPI_Finalize at exit.
    return {k: v for k, v in env.items() if k in _KEEP or not k.startswith(("OMPI_", "PMIX_", "PMI_", "OPAL_"))}


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of MPI rank ``rank`` among the descendants of ``parent`` (from /proc)."""
    todo, seen = [parent], []
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        seen.append(pid)
    for pid in seen:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and b"hpctrain" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


def start_training(argv: list[str], env: dict, run_dir: Path, timeout: float = 120) -> subprocess.Popen:
    """Start ``argv`` (an mpirun of 'hpctrain train') and return once the run has logged its
    first step, so a test can act on a job that is really training."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not (metrics.is_file() and metrics.stat().st_size > 0):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert metrics.is_file(), "training never started"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc
