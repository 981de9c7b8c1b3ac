"""Task lists: parse and validate TASKS.jsonl before anything runs.

One JSON object per line, either ``{"id": ..., "cmd": [argv...]}`` or
``{"id": ..., "fn": "module:function", "args": {...}}``, optionally with resources and
per-task overrides. Every problem is reported with its line number, all at once, so a
user fixes the file in one pass instead of one error per launch.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hpctrain.config import from_mapping
from hpctrain.errors import ConfigError, HpctrainError

# Ids become directory names under --out, so they are restricted to a safe alphabet.
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_FN_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MAX_REPORTED = 20


class FarmError(HpctrainError):
    """A task list, a farm option or the farm itself is wrong."""


@dataclass(kw_only=True, slots=True)
class TaskSpec:
    """The keys a task line may have (unknown keys are rejected)."""

    id: str | int = field(metadata={"help": "unique task id; letters, digits, '_', '.', '-' (a directory name)"})
    cmd: list[str] | None = field(default=None, metadata={"help": "argv of a command (no shell)"})
    fn: str | None = field(default=None, metadata={"help": "'module:function' called as function(**args)"})
    args: dict[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of fn"})
    cpus: int = field(default=1, metadata={"help": "cores the task needs on its worker"})
    gpus: int = field(default=0, metadata={"help": "GPUs the task needs on its worker"})
    mem_gb: float = field(default=0.0, metadata={"help": "memory (GB) the task needs on its worker"})
    timeout: float | None = field(default=None, metadata={"help": "seconds before the task's process group "
                                                                   "is killed (overrides --timeout)"})
    retries: int | None = field(default=None, metadata={"help": "retries after the first attempt "
                                                                "(overrides --retries)"})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "extra environment of a cmd task"})
    isolate: bool = field(default=False, metadata={"help": "run an fn task in its own process "
                                                          "(always so when a timeout applies)"})


@dataclass(kw_only=True, slots=True, frozen=True)
class Task:
    """A validated task. ``digest`` identifies its definition in the journal."""

    id: str
    line: int
    cmd: tuple[str, ...] | None
    fn: str | None
    args: dict
    cpus: int
    gpus: int
    mem_gb: float
    timeout: float | None
    retries: int | None
    env: dict
    isolate: bool
    digest: str

    @property
    def kind(self) -> str:
        return "cmd" if self.cmd is not None else "fn"

    def to_wire(self) -> dict:
        """The plain dict sent to a worker (cheap to pickle, no classes needed there)."""
        return {"id": self.id, "cmd": list(self.cmd) if self.cmd is not None else None, "fn": self.fn,
                "args": self.args, "cpus": self.cpus, "gpus": self.gpus, "mem_gb": self.mem_gb,
                "env": self.env, "isolate": self.isolate}


def resolve_fn(ref: str) -> Callable:
    """Import ``module:function``; raise FarmError saying what is missing."""
    if not _FN_RE.match(ref):
        raise FarmError(f"fn {ref!r} is not of the form 'package.module:function'")
    mod_name, fn_name = ref.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise FarmError(f"fn {ref!r}: module {mod_name!r} cannot be imported ({e}); "
                        "check the name and that it is on PYTHONPATH on every node") from None
    except Exception as e:  # noqa: BLE001 - a user module that fails at import (SyntaxError, ...)
        raise FarmError(f"fn {ref!r}: importing module {mod_name!r} failed with {type(e).__name__}: {e}; "
                        "fix the module (try: python -c 'import " + mod_name + "')") from None
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise FarmError(f"fn {ref!r}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def check_seconds(name: str, value: float, *, allow_zero: bool = False, hint: str = "") -> None:
    """FarmError unless ``value`` is a finite number of seconds > 0 (>= 0 with ``allow_zero``)."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        want = ">= 0" if allow_zero else "> 0"
        tail = f"; {hint}" if hint else ""
        raise FarmError(f"{name} must be a finite number of seconds {want}, got {value!r}{tail}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FAST_CHECKS: dict[str, Callable[[Any], bool]] = {
    "id": lambda v: isinstance(v, str) or _is_int(v),
    "cmd": lambda v: v is None or (isinstance(v, list) and all(isinstance(a, str) for a in v)),
    "fn": lambda v: v is None or isinstance(v, str),
    "args": lambda v: isinstance(v, dict),
    "cpus": _is_int,
    "gpus": _is_int,
    "mem_gb": _is_num,
    "timeout": lambda v: v is None or _is_num(v),
    "retries": lambda v: v is None or _is_int(v),
    "env": lambda v: isinstance(v, dict),
    "isolate": lambda v: isinstance(v, bool),
}


def _fast_spec(raw: dict) -> TaskSpec | None:
    """TaskSpec for the common, well-typed line without the generic loader (which costs
    ~100 us a line: 10 s for a 100k-task file); None sends the line to the loader, whose
    messages name any unknown key or wrong type."""
    for k, v in raw.items():
        check = _FAST_CHECKS.get(k)
        if check is None or not check(v):
            return None
    spec = TaskSpec(**raw)
    spec.mem_gb = float(spec.mem_gb)
    if spec.timeout is not None:
        spec.timeout = float(spec.timeout)
    return spec


def _digest(raw: dict) -> str:
    canon = json.dumps({k: v for k, v in raw.items() if k not in ("timeout", "retries")}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def parse_line(text: str, lineno: int, resolve: Callable[[str], Any] = resolve_fn) -> Task:
    """One line to a Task, or FarmError (without the file/line prefix)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise FarmError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise FarmError(f"expected a JSON object, got {type(raw).__name__}")
    if "id" not in raw:
        raise FarmError("missing 'id'")
    spec = _fast_spec(raw)
    if spec is None:
        try:
            spec = from_mapping(TaskSpec, raw)
        except ConfigError as e:
            raise FarmError(str(e)) from None
    tid = str(spec.id)
    if isinstance(spec.id, bool) or not _ID_RE.match(tid) or tid in (".", ".."):
        raise FarmError(f"id {spec.id!r} is not allowed; use 1-128 letters, digits, '_', '.', '-' "
                        "(it names the task's result directory)")
    if (spec.cmd is None) == (spec.fn is None):
        raise FarmError("needs exactly one of 'cmd' (an argv list) or 'fn' ('module:function'), "
                        f"got {'both' if spec.cmd is not None else 'neither'}")
    if spec.cmd is not None and not spec.cmd:
        raise FarmError("'cmd' is an empty list; give the argv, e.g. [\"python\", \"job.py\"]")
    if spec.fn is None and spec.args:
        raise FarmError("'args' only applies to 'fn' tasks; put a command's arguments in 'cmd'")
    if spec.cmd is None and spec.env:
        raise FarmError("'env' only applies to 'cmd' tasks")
    for name in ("cpus", "gpus"):
        if getattr(spec, name) < 0:
            raise FarmError(f"{name} must be >= 0, got {getattr(spec, name)}")
    if not (math.isfinite(spec.mem_gb) and spec.mem_gb >= 0):
        raise FarmError(f"mem_gb must be a finite number >= 0, got {spec.mem_gb!r}")
    if spec.timeout is not None:
        # JSON lines may say NaN or Infinity (Python's json reads both); neither is a limit
        check_seconds("timeout", spec.timeout, hint="leave 'timeout' out to use --timeout")
    if spec.retries is not None and spec.retries < 0:
        raise FarmError(f"retries must be >= 0, got {spec.retries}")
    if not all(isinstance(v, str) for v in spec.env.values()):
        raise FarmError("'env' values must be strings")
    if spec.fn is not None:
        resolve(spec.fn)
    return Task(id=tid, line=lineno, cmd=tuple(spec.cmd) if spec.cmd is not None else None, fn=spec.fn,
                args=dict(spec.args), cpus=spec.cpus, gpus=spec.gpus, mem_gb=spec.mem_gb, timeout=spec.timeout,
                retries=spec.retries, env=dict(spec.env), isolate=spec.isolate, digest=_digest(raw))


def parse_tasks(path: str | Path, resolve: Callable[[str], Any] = resolve_fn) -> list[Task]:
    """All tasks of ``path``; raises one FarmError listing every bad line (up to 20)."""
    path = Path(path)
    if not path.is_file():
        raise FarmError(f"task file {str(path)!r} does not exist; pass a JSONL file with one task per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FarmError(f"task file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    tasks: list[Task] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    resolved: dict[str, Any] = {}

    def cached_resolve(ref: str) -> Any:
        if ref not in resolved:
            resolved[ref] = resolve(ref)
        return resolved[ref]

    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = parse_line(line, lineno, cached_resolve)
        except FarmError as e:
            problems.append(f"line {lineno}: {e}")
            continue
        if task.id in first_line:
            problems.append(f"line {lineno}: duplicate id {task.id!r} (first on line {first_line[task.id]})")
            continue
        first_line[task.id] = lineno
        tasks.append(task)
    if problems:
        more = f" (and {len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
        raise FarmError(f"{str(path)!r} has {len(problems)} bad task line(s); nothing was run. "
                        + "; ".join(problems[:_MAX_REPORTED]) + more)
    if not tasks:
        raise FarmError(f"task file {str(path)!r} has no tasks; expected one JSON object per line")
    return tasks
