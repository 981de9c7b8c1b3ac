"""What a training call returns (:class:`TrainResult`) and the rank-0 progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class TrainResult:
    status: str  # "completed" | "interrupted"
    step: int
    epoch: int
    metrics: dict = field(default_factory=dict)
    run_dir: Path | None = None
    resumed_from: str | None = None


class Progress:
    """A one-line progress bar on rank 0 when stderr is a terminal."""

    def __init__(self, enabled: bool, total: int):
        self.on = enabled and sys.stderr.isatty()
        self.total = max(1, total)

    def update(self, step: int, epoch: int, loss: float) -> None:
        if not self.on:
            return
        frac = min(1.0, step / self.total)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] step {step}/{self.total} epoch {epoch} loss {loss:.4f}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\n")
