"""A tiny resumable task for exercising the job machinery without the trainer.

It runs a fixed number of deterministic "optimizer steps" on a small parameter vector,
checkpoints atomically every step, resumes from its checkpoint, and writes result.json
like the trainer does. Use it to smoke-test requeue on a new cluster:

    hpctrain submit --counter 200 --time 5 --name smoke
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hpctrain.env import rank_info
from hpctrain.errors import ConfigError
from hpctrain.fileio import append_jsonl, atomic_write_json
from hpctrain.rundir import RunDir


def step_params(params: list[float], step: int) -> list[float]:
    """One deterministic gradient step on f(x) = sum((x_i - i)^2)/2 with a step-dependent rate."""
    lr = 0.05 / (1.0 + 0.01 * step)
    return [x - lr * (x - i) for i, x in enumerate(params)]


def loss(params: list[float]) -> float:
    return 0.5 * sum((x - i) ** 2 for i, x in enumerate(params))


def reference(steps: int, dim: int) -> list[float]:
    params = [0.0] * dim
    for s in range(steps):
        params = step_params(params, s)
    return params


@dataclass(kw_only=True)
class CounterTask:
    steps: int = 50
    step_s: float = 0.05
    dim: int = 4
    crash_once_at: int | None = None  # SIGKILL itself once at this step (stands in for node loss)
    permanent_error: bool = False  # raise a ConfigError at start (stands in for a bad config)
    scale: float = 1.0  # a "hyperparameter" for sweeps: the final metric is loss * scale

    def __post_init__(self) -> None:
        # NaN and inf pass a '< 0' test; a NaN sleep raises deep inside time.sleep on the node
        if not (math.isfinite(self.step_s) and self.step_s >= 0):
            raise ConfigError(f"--counter-step-s must be a finite number of seconds >= 0, got {self.step_s}")

    def __call__(self, run_dir: Path, stop_requested: Callable[[], bool]) -> str:
        if self.permanent_error:
            raise ConfigError("counter: permanent_error is set (a stand-in for a bad config key); "
                              "fix the config and submit again")
        run = RunDir(run_dir)
        rank = rank_info().rank
        ckpt = run.checkpoints / "counter.json"
        step, params = 0, [0.0] * self.dim
        if ckpt.is_file():
            state = json.loads(ckpt.read_text())
            step, params = state["step"], state["params"]
            print(f"counter: resumed at step {step}", flush=True)
        while step < self.steps:
            if stop_requested():
                print(f"counter: stop requested at step {step}; checkpoint is current", flush=True)
                return "interrupted"
            time.sleep(self.step_s)
            params = step_params(params, step)
            step += 1
            if rank == 0:
                atomic_write_json(ckpt, {"step": step, "params": params})
                append_jsonl(run.metrics, {"step": step, "loss": loss(params)}, fsync=False)
            marker = run.checkpoints / "crashed-once"
            if self.crash_once_at is not None and step == self.crash_once_at and not marker.exists():
                marker.write_text("1")
                print(f"counter: killing myself at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        if rank == 0:
            run.write_result({"status": "completed", "step": step, "epoch": 0,
                              "metrics": {"loss": loss(params) * self.scale}, "params": params})
        return "completed"
