"""The three model families: MLP for tables, a small CNN for images, and a small attention
classifier that records its attention weights (``feature_attention``: a per-feature importance).

Every model splits into ``features`` (the body) and ``head`` (the last Linear), so transfer
learning can replace the head and give the body its own learning rate. No batch norm: its
per-rank batch statistics would make N ranks differ from one rank on the same samples.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from hpctrain.errors import ConfigError

HEAD = "head"


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (128, 64), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """3x3 conv blocks (conv, ReLU, 2x2 max-pool while the map is at least 4 wide), then a Linear head."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32),
                 dropout: float = 0.0):
        super().__init__()
        if len(in_shape) == 2:
            in_shape = (1, *in_shape)
        if len(in_shape) != 3:
            raise ConfigError(f"model.kind=cnn: samples of shape {tuple(in_shape)} are not images; expected "
                              "(C, H, W) or (H, W) in the manifest's sample_shape, or use model.kind=mlp")
        c, h, w = in_shape
        self.in_shape = (c, h, w)
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = ch
        layers.append(nn.Flatten())
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x.reshape(x.shape[0], *self.in_shape)))


class AttentionClassifier(nn.Module):
    """Each input feature is a token (value x its own embedding + its own bias), a learned
    [CLS] token is prepended, and the [CLS] output feeds the head.

    After every forward, ``last_attention`` holds one (batch, heads, tokens, tokens) tensor
    per layer; :meth:`feature_attention` turns the last layer's [CLS] row into a per-feature
    importance (there is no explain command yet; this is the hook one would read).
    """

    def __init__(self, n_features: int, num_classes: int, embed_dim: int = 32, heads: int = 4, layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.n_features = n_features
        scale = 1.0 / math.sqrt(embed_dim)
        self.token_weight = nn.Parameter(torch.randn(n_features, embed_dim) * scale)
        self.token_bias = nn.Parameter(torch.zeros(n_features, embed_dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.last_attention: list[torch.Tensor] = []

    def forward(self, x):
        x = x.reshape(x.shape[0], self.n_features)
        tokens = x.unsqueeze(-1) * self.token_weight + self.token_bias
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        attn = []
        for block in self.blocks:
            h, a = block(h)
            attn.append(a.detach())
        self.last_attention = attn
        return self.head(self.norm(h[:, 0]))

    @torch.no_grad()
    def feature_attention(self, x) -> torch.Tensor:
        """(batch, n_features): the last layer's [CLS]-to-feature attention, averaged over heads."""
        was = self.training
        self.eval()
        try:
            self(x)
        finally:
            self.train(was)
        return self.last_attention[-1][:, :, 0, 1:].mean(dim=1)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, h):
        q = self.norm1(h)
        out, weights = self.attn(q, q, q, need_weights=True, average_attn_weights=False)
        h = h + out
        return h + self.mlp(self.norm2(h)), weights


def build_model(kind: str, sample_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (128, 64),
                channels: Sequence[int] = (16, 32), embed_dim: int = 32, heads: int = 4, layers: int = 1,
                dropout: float = 0.0) -> nn.Module:
    n_features = int(math.prod(sample_shape))
    if num_classes < 2:
        raise ConfigError(f"the data has {num_classes} class(es); a classifier needs at least 2")
    if kind == "mlp":
        return MLP(n_features, num_classes, hidden, dropout)
    if kind == "cnn":
        return SmallCNN(tuple(sample_shape), num_classes, channels, dropout)
    if kind == "attention":
        return AttentionClassifier(n_features, num_classes, embed_dim, heads, layers, dropout)
    raise ConfigError(f"model.kind: got {kind!r}, expected mlp, cnn or attention")


def model_from_config(mcfg, sample_shape: Sequence[int], num_classes: int) -> nn.Module:
    return build_model(mcfg.kind, sample_shape, num_classes, hidden=mcfg.hidden, channels=mcfg.channels,
                       embed_dim=mcfg.embed_dim, heads=mcfg.heads, layers=mcfg.layers, dropout=mcfg.dropout)


def is_head(name: str) -> bool:
    return name == HEAD or name.startswith(HEAD + ".")


def load_transfer(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy matching tensors of ``state`` into ``model``; the head is kept fresh when its shape
    differs (another class count). Returns the names left at their initial values."""
    own = model.state_dict()
    fresh = []
    for name, t in own.items():
        src = state.get(name)
        if src is not None and tuple(src.shape) == tuple(t.shape):
            with torch.no_grad():
                t.copy_(src)
        elif is_head(name):
            fresh.append(name)
        else:
            raise ConfigError(f"model.init_from: parameter {name!r} has shape "
                              f"{None if src is None else tuple(src.shape)} in the checkpoint, {tuple(t.shape)} "
                              "in this model; the architecture (model.kind/hidden/channels/...) must match")
    return fresh
