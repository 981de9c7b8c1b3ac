"""Run one attempt of one task on a worker: a command, an isolated function, or an
in-process function. No MPI here; the worker loop calls :func:`run_attempt` from a thread.

Commands start in their own session (a new process group), so a timeout kills the task
and every child it forked, not just the top process. A task that calls ``setsid`` itself
leaves that group and is out of reach; that is documented in docs/farm.md.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hpctrain.farm.tasks import resolve_fn

TAIL_BYTES = 2000


@dataclass(slots=True)
class TaskContext:
    """What a function task may ask about its own run (passed as ``ctx=`` when it takes one)."""

    task_id: str
    attempt: int
    task_dir: Path
    worker: int
    cpus: int
    gpu_ids: tuple[int, ...]


class _Groups:
    """Process groups of running commands, so a dying worker can take them down with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pgids: set[int] = set()

    def add(self, pgid: int) -> None:
        with self._lock:
            self._pgids.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._pgids.discard(pgid)

    def kill_all(self) -> None:
        with self._lock:
            pgids = list(self._pgids)
        for pgid in pgids:
            _killpg(pgid, signal.SIGKILL)


GROUPS = _Groups()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def task_dir(out: Path, task_id: str) -> Path:
    return out / "tasks" / task_id


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _task_env(wire: dict, ctx: TaskContext) -> dict[str, str]:
    env = dict(os.environ)
    env.update(wire.get("env") or {})
    env.update(HPCTRAIN_FARM_TASK_ID=ctx.task_id, HPCTRAIN_FARM_ATTEMPT=str(ctx.attempt),
               HPCTRAIN_FARM_TASK_DIR=str(ctx.task_dir), HPCTRAIN_FARM_WORKER=str(ctx.worker))
    if ctx.cpus > 0:
        # Libraries size their thread pools to the node; a task gets what it declared.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env.setdefault(name, str(ctx.cpus))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in ctx.gpu_ids)
    return env


def run_process(argv: list[str], ctx: TaskContext, env: dict[str, str], timeout: float | None,
                kill_grace: float = 2.0) -> dict:
    """Run ``argv`` in a new process group; kill the group on timeout."""
    out_path = ctx.task_dir / f"attempt{ctx.attempt}.out"
    err_path = ctx.task_dir / f"attempt{ctx.attempt}.err"
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        except OSError as e:
            return {"ok": False, "rc": None, "error": f"cannot start {argv[0]!r}: {e.strerror or e}",
                    "stderr_tail": "", "elapsed_s": time.monotonic() - t0}
        GROUPS.add(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=kill_grace)
            except subprocess.TimeoutExpired:
                pass
            # SIGKILL the group even if the leader exited on SIGTERM: its children may not have.
            _killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        finally:
            GROUPS.discard(proc.pid)
    elapsed = time.monotonic() - t0
    if timed_out:
        error = f"timed out after {timeout:g} s; its process group was killed"
    elif rc < 0:
        error = f"killed by signal {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"rc {rc}"
    elif rc != 0:
        error = f"exited with code {rc}"
    else:
        error = ""
    return {"ok": not timed_out and rc == 0, "rc": rc, "error": error, "stderr_tail": _tail(err_path),
            "elapsed_s": elapsed}


def _call(fn_ref: str, args: dict, ctx: TaskContext):
    fn = resolve_fn(fn_ref)
    try:
        takes_ctx = "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_ctx = False
    return fn(**args, ctx=ctx) if takes_ctx else fn(**args)


def _store_result(ctx: TaskContext, value) -> None:
    if value is None:
        return
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps({"repr": repr(value)[:10000]})
    from hpctrain.fileio import atomic_write_text

    atomic_write_text(ctx.task_dir / "result.json", text + "\n")


def run_inline(wire: dict, ctx: TaskContext) -> dict:
    """Call an fn task in this process (the cheap path: no process start)."""
    t0 = time.monotonic()
    try:
        _store_result(ctx, _call(wire["fn"], wire.get("args") or {}, ctx))
    except BaseException as e:  # noqa: BLE001 - even sys.exit() in user code is only the task's failure
        tb = traceback.format_exc()
        return {"ok": False, "rc": None, "error": f"{type(e).__name__}: {e}"[:500], "stderr_tail": tb[-TAIL_BYTES:],
                "elapsed_s": time.monotonic() - t0}
    return {"ok": True, "rc": 0, "error": "", "stderr_tail": "", "elapsed_s": time.monotonic() - t0}


def run_attempt(wire: dict, *, attempt: int, out: Path, worker: int, gpu_ids: tuple[int, ...],
                timeout: float | None, kill_grace: float = 2.0) -> dict:
    """Run one attempt; never raises for a task's own failure. Returns a result dict."""
    started = time.time()
    res = _run_attempt(wire, attempt=attempt, out=out, worker=worker, gpu_ids=gpu_ids, timeout=timeout,
                       kill_grace=kill_grace)
    res["started"] = started
    return res


def _run_attempt(wire: dict, *, attempt: int, out: Path, worker: int, gpu_ids: tuple[int, ...],
                 timeout: float | None, kill_grace: float) -> dict:
    ctx = TaskContext(task_id=wire["id"], attempt=attempt, task_dir=task_dir(out, wire["id"]), worker=worker,
                      cpus=int(wire.get("cpus") or 0), gpu_ids=tuple(gpu_ids))
    ctx.task_dir.mkdir(parents=True, exist_ok=True)
    if wire.get("cmd") is not None:
        return run_process(list(wire["cmd"]), ctx, _task_env(wire, ctx), timeout, kill_grace)
    if timeout is None and not wire.get("isolate"):
        return run_inline(wire, ctx)
    # An fn with a timeout runs in a child process: a thread cannot be killed, a process group can.
    spec = ctx.task_dir / f"attempt{attempt}.fn.json"
    spec.write_text(json.dumps({"fn": wire["fn"], "args": wire.get("args") or {}, "worker": worker,
                                "gpu_ids": list(gpu_ids), "cpus": ctx.cpus}))
    argv = [sys.executable, "-m", "hpctrain.farm.runner", str(spec), wire["id"], str(attempt), str(ctx.task_dir)]
    return run_process(argv, ctx, _task_env(wire, ctx), timeout, kill_grace)


def _child_main(argv: list[str]) -> int:
    spec_path, task_id, attempt, tdir = argv
    spec = json.loads(Path(spec_path).read_text())
    ctx = TaskContext(task_id=task_id, attempt=int(attempt), task_dir=Path(tdir), worker=int(spec["worker"]),
                      cpus=int(spec["cpus"]), gpu_ids=tuple(spec["gpu_ids"]))
    try:
        _store_result(ctx, _call(spec["fn"], spec["args"], ctx))
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
