"""Helpers of the monitor tests: a model whose forward sleeps on one rank (a synthetic straggler)
and a loader wrapper that waits before every batch (a deliberately slow input pipeline)."""

from __future__ import annotations

import time


def sleepy_mlp(*, sample_shape, num_outputs, sleep_rank: int = 1, sleep_s: float = 0.02):
    """A one-layer model; on rank ``sleep_rank`` every forward pass also sleeps ``sleep_s``."""
    import torch

    from hpctrain.env import rank_info

    slow = rank_info().rank == sleep_rank

    class Sleepy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(int(sample_shape[0]), num_outputs)

        def forward(self, x):
            if slow:
                time.sleep(sleep_s)
            return self.lin(x)

    return Sleepy()


class SlowLoader:
    """The trainer's loader, with ``delay_s`` of waiting before each batch it yields."""

    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            time.sleep(self.delay_s)
            yield batch

    def __getattr__(self, name):
        return getattr(self.inner, name)
