"""A residual network for tables: the kind of model a user brings, knowing nothing of hpctrain.

hpctrain calls ``build(**model.args, sample_shape=..., num_outputs=...)`` (config) and the
standalone script calls it directly; the model itself is plain PyTorch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)  # per-sample statistics: N ranks equal one rank (batch norm would not)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.drop(torch.relu(self.fc1(self.norm(h)))))


class TabularResNet(nn.Module):
    def __init__(self, in_features: int, num_outputs: int, width: int = 64, blocks: int = 2, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(blocks)))
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x.reshape(x.shape[0], -1))))


def build(*, sample_shape, num_outputs: int, width: int = 64, blocks: int = 2, dropout: float = 0.0) -> nn.Module:
    """The factory a config names as ``model.module: byo_example.model:build``."""
    return TabularResNet(math.prod(sample_shape), num_outputs, width=width, blocks=blocks, dropout=dropout)
