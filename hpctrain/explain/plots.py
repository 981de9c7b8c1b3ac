"""The pictures of an explanation (matplotlib, Agg backend: no display on a compute node).
Each function takes plain numbers and returns PNG bytes."""

from __future__ import annotations

import numpy as np

from hpctrain.pictures import literal as _t, plt as _plt, png_bytes as _png  # noqa: F401

TOP = 30  # bars shown per chart (explain.json has every feature)


def bar_chart(names: list[str], values: np.ndarray, title: str, xlabel: str, errors: np.ndarray | None = None) -> bytes:
    """Horizontal bars, largest on top; the TOP largest when there are more features."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(-values, kind="stable")[:TOP]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.28 * len(order)))
    pos = np.arange(len(order))[::-1]
    ax.barh(pos, values[order], xerr=None if errors is None else np.asarray(errors, dtype=float)[order],
            color="#3b75af", ecolor="#555", capsize=2)
    ax.set_yticks(pos, [_t(names[i]) for i in order], fontsize=8)
    ax.axvline(0, color="#999", lw=0.8)
    shown = f" (top {len(order)} of {len(values)})" if len(values) > len(order) else ""
    ax.set_title(_t(title) + shown, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    return _png(fig)


def _gray(img: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, 3) picture in [0, 1] of one (C, H, W) or (H, W) sample."""
    a = np.asarray(img, dtype=float)
    if a.ndim == 3:
        a = np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a.mean(axis=0)
    lo, hi = np.nanmin(a), np.nanmax(a)
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _heat(attr: np.ndarray) -> np.ndarray:
    """|attribution| summed over channels, as (H, W)."""
    a = np.abs(np.asarray(attr, dtype=float))
    return a.sum(axis=0) if a.ndim == 3 else a


def image_grid(x: np.ndarray, attrs: dict[str, np.ndarray], titles: list[str], per_row: int = 4) -> bytes:
    """``per_row`` samples per row of the figure, each as its input and then the input with each
    method's |attribution| overlaid."""
    plt = _plt()
    group = 1 + len(attrs)
    n = len(x)
    rows = (n + per_row - 1) // per_row
    cols = group * min(per_row, n)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, per_row)
        row = axes[r][c * group:(c + 1) * group]
        g = _gray(x[i])
        cmap = None if g.ndim == 3 else "gray"
        row[0].imshow(g, cmap=cmap, interpolation="nearest")
        row[0].set_title(_t(titles[i]), fontsize=8)
        for k, (name, a) in enumerate(attrs.items(), start=1):
            row[k].imshow(g, cmap=cmap, interpolation="nearest")
            row[k].imshow(_heat(a[i]), cmap="inferno", alpha=0.6, interpolation="nearest")
            row[k].set_title(name, fontsize=8)
    return _png(fig)


def mean_maps(maps: dict[str, np.ndarray]) -> bytes:
    """Mean |attribution| per pixel for each method, in the image's layout."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps), figsize=(2.6 * len(maps), 2.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(_heat(m), cmap="inferno", interpolation="nearest")
        ax.set_title(f"mean |{name}|", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)


def attention_maps(maps: list[np.ndarray], tokens: list[str]) -> bytes:
    """One heatmap per (layer, head): rows attend to columns; ``maps[l]`` is (heads, T, T)."""
    plt = _plt()
    layers, heads = len(maps), maps[0].shape[0]
    t = len(tokens)
    side = max(2.6, 0.22 * t + 1.2)
    fig, axes = plt.subplots(layers, heads, figsize=(side * heads + 1.0, side * layers), squeeze=False,
                             layout="constrained")
    labels = [_t(s) for s in tokens] if t <= 40 else None
    top = max(float(np.max(m)) for m in maps)  # one colour scale, so heads compare at a glance
    im = None
    for li in range(layers):
        for h in range(heads):
            ax = axes[li][h]
            im = ax.imshow(maps[li][h], cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
            ax.set_title(f"layer {li}, head {h}", fontsize=9)
            if labels is not None:
                ax.set_xticks(range(t), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(t), labels, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    return _png(fig)
