"""Per-sample attributions through Captum (integrated gradients, saliency, occlusion) and the
attention weights of models that record them. Arrays in, arrays out: no files, no ranks.

The explained output of a classifier is the logit of the predicted class: it is what the
prediction was made from, and integrated gradients' completeness holds for it exactly (a
softmax probability would mix in every other class). A regression model's is its first output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def require_captum():
    from hpctrain.extras import require

    return require("captum.attr", "hpctrain explain")


def occlusion_window(sample_shape: tuple[int, ...], window: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The sliding window and its strides: ``window`` features of a table, ``window`` x ``window``
    pixels over every channel of an image (default 1, and max(1, min(H, W) // 8) for images).
    It slides by one position, so every feature is covered whatever the window (Captum averages
    the overlapping windows)."""
    if len(sample_shape) >= 2:
        h, w = sample_shape[-2:]
        k = window if window is not None else max(1, min(h, w) // 8)
        k = min(k, h, w)
        lead = tuple(sample_shape[:-2])
        return lead + (k, k), lead + (1, 1)
    k = min(window or 1, int(np.prod(sample_shape)))
    return (k,), (1,)


@dataclass(slots=True)
class ChunkResult:
    """The attributions of one chunk of samples (every array has the chunk's rows first)."""

    outputs: np.ndarray                         # (n, classes or targets) model outputs
    target: np.ndarray                          # (n,) the explained output's index
    baseline_output: np.ndarray                 # (n,) the explained output at the baseline
    attributions: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (n, *sample_shape)
    ig_delta: np.ndarray | None = None          # (n,) sum(IG) - (f(x) - f(baseline))
    attention: list[np.ndarray] | None = None   # per layer (n, heads, tokens, tokens)


def attribute_chunk(model, x: np.ndarray, baseline: np.ndarray, methods: tuple[str, ...], *, steps: int,
                    window: tuple[tuple[int, ...], tuple[int, ...]], output: int | None = None) -> ChunkResult:
    """Explain each row of ``x`` (float32, (n, *sample_shape)): the model's output number
    ``output``, or (None) the output of each row's predicted class."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    bt = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(baseline, x.shape), dtype=np.float32))
    with torch.no_grad():
        outputs = model(xt)
        target = outputs.argmax(dim=1) if output is None else torch.full((len(xt),), output, dtype=torch.int64)
        base_out = model(bt).gather(1, target[:, None])[:, 0]
    res = ChunkResult(outputs.numpy().astype(np.float64), target.numpy(), base_out.numpy().astype(np.float64))
    if "attention" in methods:
        res.attention = read_attention(model, xt)
    wanted = [m for m in ("ig", "saliency", "occlusion") if m in methods]
    if not wanted:
        return res
    attr = require_captum()
    if "ig" in methods:
        ig = attr.IntegratedGradients(model)
        a, delta = ig.attribute(xt, baselines=bt, target=target, n_steps=steps, return_convergence_delta=True)
        res.attributions["ig"] = a.detach().numpy().astype(np.float64)
        res.ig_delta = delta.detach().numpy().astype(np.float64).reshape(-1)
    if "saliency" in methods:
        a = attr.Saliency(model).attribute(xt.clone().requires_grad_(), target=target, abs=True)
        res.attributions["saliency"] = a.detach().numpy().astype(np.float64)
    if "occlusion" in methods:
        with torch.no_grad():
            a = attr.Occlusion(model).attribute(xt, sliding_window_shapes=window[0], strides=window[1], baselines=bt,
                                                target=target, perturbations_per_eval=16)
        res.attributions["occlusion"] = a.detach().numpy().astype(np.float64)
    return res


def has_attention(model) -> bool:
    """Whether the model records its attention weights (the attention kind's ``last_attention``)."""
    return isinstance(getattr(model, "last_attention", None), list)


def read_attention(model, xt) -> list[np.ndarray]:
    """One forward pass; the weights the model recorded: per layer (n, heads, tokens, tokens).
    Reading them needs no change to the model: its forward keeps them for exactly this."""
    import torch

    with torch.no_grad():
        model(xt)
    return [a.detach().numpy().astype(np.float64) for a in model.last_attention]
