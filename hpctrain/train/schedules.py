"""Learning-rate rules as pure functions of (step, epoch), plus the one stateful rule (plateau).

Pure functions make resume exact for free: the LR after a restart is recomputed from the
step and epoch in the checkpoint; only the plateau state is saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def scaled_lr(base_lr: float, world_size: int, scale: bool) -> float:
    """The linear scaling rule: N ranks see N times the samples per step, so N times the LR."""
    return base_lr * world_size if scale else base_lr


def warmup_factor(step: int, warmup_steps: int, world_size: int) -> float:
    """Ramp linearly from 1/world_size of the scaled LR (i.e. the one-rank LR) to all of it."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    start = 1.0 / max(1, world_size)
    return start + (1.0 - start) * step / warmup_steps


def schedule_factor(kind: str, *, epoch: int, step: int, total_steps: int, gamma: float, step_epochs: int,
                    peak: float, min_lr: float) -> float:
    """Multiplier of the peak LR for the epoch-level schedules (plateau handled by :class:`Plateau`)."""
    if kind in ("constant", "plateau"):
        return 1.0
    if kind == "step":
        return gamma ** (epoch // step_epochs)
    if kind == "exponential":
        return gamma ** epoch
    if kind == "cosine":
        t = min(1.0, step / max(1, total_steps))
        floor = min_lr / peak if peak > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {kind!r}")


@dataclass(slots=True)
class Plateau:
    """Multiply the LR by ``gamma`` after ``patience`` epochs without improvement of a metric."""

    mode: str  # "max" or "min"
    patience: int
    gamma: float
    factor: float = 1.0
    best: float | None = None
    bad: int = 0

    def update(self, value: float, min_delta: float = 0.0) -> None:
        better = self.best is None or (value > self.best + min_delta if self.mode == "max"
                                       else value < self.best - min_delta)
        if better:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.factor *= self.gamma
            self.bad = 0

    def state_dict(self) -> dict:
        return {"factor": self.factor, "best": self.best, "bad": self.bad}

    def load_state_dict(self, d: dict) -> None:
        self.factor, self.best, self.bad = float(d["factor"]), d["best"], int(d["bad"])


def lr_at(sched, *, peak: float, step: int, epoch: int, total_steps: int, world_size: int,
          plateau: Plateau | None = None) -> float:
    """The LR of the optimizer step ``step`` (0-based) in ``epoch``, from a ScheduleConfig."""
    f = schedule_factor(sched.kind, epoch=epoch, step=step, total_steps=total_steps, gamma=sched.gamma,
                        step_epochs=sched.step_epochs, peak=peak, min_lr=sched.min_lr)
    if plateau is not None:
        f *= plateau.factor
    lr = peak * f * warmup_factor(step, sched.warmup_steps, world_size if sched.scale_lr else 1)
    if sched.kind == "plateau":
        lr = max(lr, sched.min_lr)
    return lr
