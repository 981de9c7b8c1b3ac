"""Early stopping on a validation metric, keeping the best weights to restore at the end."""

from __future__ import annotations

import copy
from typing import Any


def mode_of(metric: str) -> str:
    return "min" if metric.endswith(("loss", "mse", "mae")) else "max"


class EarlyStopping:
    """Stop after ``patience`` epochs in which ``metric`` did not improve by more than ``min_delta``.

    ``best_state`` is a CPU copy of the model's state dict at the best epoch; the trainer loads
    it back when training ends (early or not), so the final model is the best one seen.
    """

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0, enabled: bool = True):
        self.metric, self.patience, self.min_delta, self.enabled = metric, patience, min_delta, enabled
        self.mode = mode_of(metric)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, Any] | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, epoch: int, model) -> bool:
        """Record an epoch's metric; True when training should stop."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.enabled and self.bad_epochs >= self.patience

    def restore(self, model) -> bool:
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": copy.copy(self.best_state)}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = d["best"], d["best_epoch"], int(d["bad_epochs"])
        self.best_state = d.get("best_state")
