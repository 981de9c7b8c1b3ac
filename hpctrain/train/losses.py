"""Losses: balanced class weights and the focal loss for imbalanced classes, and the loss
registry (``loss.module``): built-ins by name, or a user's factory by import path."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F


def balanced_weights(class_counts: Mapping[int, int], num_classes: int) -> torch.Tensor:
    """w_c = n / (k * n_c), as sklearn's compute_class_weight('balanced'); absent classes get 0."""
    counts = torch.tensor([float(class_counts.get(c, 0)) for c in range(num_classes)], dtype=torch.float64)
    present = counts > 0
    n, k = counts.sum(), present.sum()
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = n / (k * counts[present])
    return w.float()


def inverse_frequency(class_counts: Mapping[int, int], num_classes: int) -> torch.Tensor:
    """Per-class sample weights 1/n_c, normalised so that the mean sample weight is 1."""
    counts = torch.tensor([float(class_counts.get(c, 0)) for c in range(num_classes)], dtype=torch.float64)
    w = torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
    total = float((w * counts).sum())
    return (w * counts.sum() / total).float() if total > 0 else w.float()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0,
               weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """FL = -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017); gamma=0 is weighted cross-entropy."""
    logp = F.log_softmax(logits, dim=-1)
    if target.dim() == 2:  # soft labels (mixup): the expectation of the focal term over the label mass
        per_class = -((1.0 - logp.exp()) ** gamma) * logp * target
        if weight is not None:
            per_class = per_class * weight
        loss = per_class.sum(1)
        return loss.mean() if reduction == "mean" else (loss.sum() if reduction == "sum" else loss)
    logp_t = logp.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t
    if weight is not None:
        w = weight[target]
        loss = loss * w
        if reduction == "mean":
            return loss.sum() / w.sum().clamp(min=1e-12)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class Criterion:
    """The configured loss: cross-entropy or focal, optionally with class weights."""

    def __init__(self, kind: str = "cross_entropy", *, weight: torch.Tensor | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0):
        self.kind, self.weight, self.gamma, self.smoothing = kind, weight, gamma, label_smoothing

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(logits.device)
        if self.kind == "focal":
            return focal_loss(logits, target, gamma=self.gamma, weight=w)
        return F.cross_entropy(logits, target, weight=w, label_smoothing=self.smoothing)


def _cross_entropy(*, label_smoothing: float = 0.0) -> Callable:
    return Criterion("cross_entropy", label_smoothing=label_smoothing)


def _focal(*, gamma: float = 2.0) -> Callable:
    return Criterion("focal", gamma=gamma)


def _regression(fn: Callable) -> Callable[..., Callable]:
    def factory() -> Callable:
        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # one output and targets of shape (N,) are the same values: compare them as such
            if out.dim() == 2 and out.shape[1] == 1 and target.dim() == 1:
                out = out[:, 0]
            return fn(out, target.to(out.dtype))

        return loss

    return factory


# name -> factory(**loss.args) -> callable(outputs, targets) -> scalar tensor
BUILTIN_LOSSES: dict[str, Callable[..., Callable]] = {
    "cross_entropy": _cross_entropy, "focal": _focal, "mse": _regression(F.mse_loss), "mae": _regression(F.l1_loss)}


def loss_from_config(lcfg, **_: Any) -> Callable:
    """The callable of a ``loss`` section whose ``module`` is set (built-in name or import path)."""
    from hpctrain.train.models import call_factory, import_object

    spec = lcfg.module
    factory = BUILTIN_LOSSES[spec] if spec in BUILTIN_LOSSES else import_object(spec, "loss.module")
    fn = call_factory(factory, "loss.module", spec, dict(lcfg.args))
    if not callable(fn):
        from hpctrain.errors import ConfigError

        raise ConfigError(f"loss.module: {spec!r} returned a {type(fn).__name__}, expected a callable "
                          "(outputs, targets) -> scalar tensor")
    return fn
