"""The model registry: the three built-in families (MLP for tables, a small CNN for images, a
small attention classifier that records its attention weights: ``feature_attention``, a
per-feature importance) and any ``torch.nn.Module`` a user names by import path
(``model.module: "pkg.mod:factory"``).

A factory is called as ``factory(**model.args, sample_shape=..., num_outputs=...)`` and must
return an ``nn.Module`` mapping a batch ``(N, *sample_shape)`` to ``(N, num_outputs)``; the
built-in kinds are entries of the same registry (:data:`BUILTIN_MODELS`). Every failure
(import, signature, return type, output shape) is a one-line ConfigError naming the key.

Every model splits into ``features`` (the body) and ``head`` (the last Linear), so transfer
learning can replace the head and give the body its own learning rate. No batch norm: its
per-rank batch statistics would make N ranks differ from one rank on the same samples.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from typing import Any, Callable, Mapping, Sequence

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

    def pipeline_blocks(self) -> list[nn.Module]:
        """The layers in order, for pipeline stages (hpctrain.train.pipeline)."""
        return [*self.features, self.head]


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

    def pipeline_blocks(self) -> list[nn.Module]:
        """The layers in order, for pipeline stages (hpctrain.train.pipeline)."""
        return [_Reshape(self.in_shape), *self.features, self.head]


class AttentionClassifier(nn.Module):
    """Each input feature is a token (value x its own embedding + its own bias), a learned
    [CLS] token is prepended, and the [CLS] output feeds the head.

    After every forward, ``last_attention`` holds one (batch, heads, tokens, tokens) tensor
    per layer; :meth:`feature_attention` turns the last layer's [CLS] row into a per-feature
    importance. ``hpctrain explain --method attention`` reads ``last_attention`` after its own
    forward pass (hpctrain/explain/attribute.py); training does not depend on it.
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

    def pipeline_blocks(self) -> list[nn.Module]:
        """Token embedding, each encoder block, then norm + [CLS] + head, for pipeline stages
        (hpctrain.train.pipeline). The attention weights are not recorded on this path."""
        return [_Tokens(self), *(_HiddenOnly(b) for b in self.blocks), _ClsHead(self.norm, self.head)]

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


class _Reshape(nn.Module):
    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class _Tokens(nn.Module):
    """AttentionClassifier's embedding and [CLS] prefix (the same parameter objects)."""

    def __init__(self, m: AttentionClassifier):
        super().__init__()
        self.n_features = m.n_features
        self.token_weight, self.token_bias, self.cls = m.token_weight, m.token_bias, m.cls

    def forward(self, x):
        x = x.reshape(x.shape[0], self.n_features)
        tokens = x.unsqueeze(-1) * self.token_weight + self.token_bias
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)


class _HiddenOnly(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, h):
        return self.block(h)[0]


class _ClsHead(nn.Module):
    def __init__(self, norm: nn.Module, head: nn.Module):
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, h):
        return self.head(self.norm(h[:, 0]))


def build_model(kind: str, sample_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (128, 64),
                channels: Sequence[int] = (16, 32), embed_dim: int = 32, heads: int = 4, layers: int = 1,
                dropout: float = 0.0, regression: bool = False) -> nn.Module:
    """``num_classes`` is the number of outputs: classes, or regression targets (``regression=True``)."""
    n_features = int(math.prod(sample_shape))
    if num_classes < (1 if regression else 2):
        raise ConfigError(f"the data has {num_classes} class(es); a classifier needs at least 2")
    if kind == "mlp":
        return MLP(n_features, num_classes, hidden, dropout)
    if kind == "cnn":
        return SmallCNN(tuple(sample_shape), num_classes, channels, dropout)
    if kind == "attention":
        return AttentionClassifier(n_features, num_classes, embed_dim, heads, layers, dropout)
    raise ConfigError(f"model.kind: got {kind!r}, expected mlp, cnn or attention")


def _builtin(kind: str) -> Callable[..., nn.Module]:
    def factory(*, sample_shape: Sequence[int], num_outputs: int, **kw) -> nn.Module:
        return build_model(kind, sample_shape, num_outputs, regression=num_outputs == 1, **kw)

    factory.__name__ = kind
    return factory


# name -> factory(sample_shape=..., num_outputs=..., **args): what model.kind selects
BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {k: _builtin(k) for k in ("mlp", "cnn", "attention")}


def import_object(spec: str, key: str) -> Any:
    """The object named by ``"package.module:attribute"`` (dots allowed in the attribute).

    The current directory is tried last when the module is not found on ``sys.path``: under the
    ``hpctrain`` console script ``sys.path[0]`` is the script's directory, not the user's project,
    so a package next to the config would otherwise need PYTHONPATH for no good reason.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"{key}: got {spec!r}, expected 'package.module:factory' (module path, a colon, "
                          "the name of a callable in it)")
    try:
        mod = _import(mod_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import module {mod_name!r} ({type(e).__name__}: {e}); install the "
                          f"package or add its parent directory to PYTHONPATH (now {os.environ.get('PYTHONPATH', '')!r}"
                          f", current directory {os.getcwd()!r})") from None
    except Exception as e:  # noqa: BLE001 - user code failing at import: name it, one line
        raise ConfigError(f"{key}: importing module {mod_name!r} raised {type(e).__name__}: {e}; fix the module "
                          "(run 'python -c \"import " + mod_name + "\"' to see the traceback)") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(mod) if not n.startswith("_"))
            raise ConfigError(f"{key}: module {mod_name!r} has no attribute {attr!r}; it defines "
                              f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
        obj = getattr(obj, part)
    return obj


def _import(mod_name: str):
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        top = mod_name.split(".")[0]
        cwd = os.getcwd()
        if e.name not in (top, mod_name) or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(mod_name)


def call_factory(factory: Callable[..., Any], key: str, spec: str, args: Mapping[str, Any], **fixed: Any) -> Any:
    """``factory(**args, **fixed)`` with a one-line error for a signature that cannot take them
    or for an exception inside it."""
    clash = sorted(set(args) & set(fixed))
    if clash:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.args: {clash} are set by hpctrain, not by args; remove them")
    if not callable(factory):
        raise ConfigError(f"{key}: {spec!r} is a {type(factory).__name__}, not a callable; name a function or class")
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**args, **fixed)
        except TypeError as e:
            wanted = ", ".join([*(f"{k}=" for k in args), *(f"{k}=" for k in fixed)])
            raise ConfigError(f"{key}: {spec!r}{sig} cannot be called as f({wanted}): {e}; give it keyword "
                              f"parameters {', '.join(fixed) or 'for the args'} (and **kwargs or one per key of "
                              "args)") from None
    try:
        return factory(**args, **fixed)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: name it in one line, keep the cause chained
        raise ConfigError(f"{key}: {spec!r} raised {type(e).__name__}: {e}") from e


def model_from_config(mcfg, sample_shape: Sequence[int], num_outputs: int, regression: bool = False) -> nn.Module:
    """The model of the config's ``model`` section: a built-in kind or ``model.module``."""
    if mcfg.module is None:
        return build_model(mcfg.kind, sample_shape, num_outputs, hidden=mcfg.hidden, channels=mcfg.channels,
                           embed_dim=mcfg.embed_dim, heads=mcfg.heads, layers=mcfg.layers, dropout=mcfg.dropout,
                           regression=regression)
    spec = mcfg.module
    factory = BUILTIN_MODELS[spec] if spec in BUILTIN_MODELS else import_object(spec, "model.module")
    model = call_factory(factory, "model.module", spec, dict(mcfg.args), sample_shape=tuple(sample_shape),
                         num_outputs=num_outputs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.module: {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module; "
                          "return the model instance from the factory")
    if not any(True for _ in model.parameters()):
        raise ConfigError(f"model.module: {spec!r} returned a {type(model).__name__} without parameters; "
                          "nothing would train")
    return model


def check_output(model: nn.Module, x: torch.Tensor, num_outputs: int, key: str, what: str) -> torch.Tensor:
    """One forward pass of ``x`` (N, *sample_shape); the output must be (N, num_outputs)."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - user code: one line naming the key
        raise ConfigError(f"{key}: the model's forward pass on a batch of shape {tuple(x.shape)} raised "
                          f"{type(e).__name__}: {e}; it must accept (N, *sample_shape) float32 input") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{key}: the model returned a {type(out).__name__}, expected one tensor of shape "
                          f"({x.shape[0]}, {num_outputs})")
    want = (x.shape[0], num_outputs)
    if tuple(out.shape) != want:
        raise ConfigError(f"{key}: the model maps a batch of shape {tuple(x.shape)} to {tuple(out.shape)}, but "
                          f"{what} need {want}; make its last layer output {num_outputs} value(s) per sample")
    return out


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
