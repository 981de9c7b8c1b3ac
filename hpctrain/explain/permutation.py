"""Permutation importance: how much accuracy and macro F1 drop when one feature's values are
shuffled across the rows (breaking its link to the label, keeping its distribution).

Each rank scores its own chunks of rows and returns confusion counts; counts add up exactly
over ranks, so the metrics are those of one process. The shuffles come from one seeded
generator in a fixed order (repeat, then feature) that every rank replays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hpctrain.train.metrics import confusion, report

METRICS = ("accuracy", "macro_f1")


def permutations(n_rows: int, n_features: int, repeats: int, seed: int):
    """Yield ``(repeat, feature, perm)`` in the one order every rank uses."""
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        for j in range(n_features):
            yield r, j, rng.permutation(n_rows)


def confusion_counts(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, n_classes: int,
                     row_chunks: list[tuple[int, int]], repeats: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts over ``row_chunks`` (this rank's part of the rows): unshuffled
    ``(C, C)`` and shuffled ``(repeats, features, C, C)``. ``predict`` maps a batch of
    inputs to class indices; ``x`` is (N, *sample_shape), its flattened columns are the features."""
    n = len(x)
    flat = x.reshape(n, -1)
    f = flat.shape[1]
    base = np.zeros((n_classes, n_classes), dtype=np.int64)
    shuffled = np.zeros((repeats, f, n_classes, n_classes), dtype=np.int64)
    for lo, hi in row_chunks:
        base += confusion(y[lo:hi], predict(x[lo:hi]), n_classes)
    if not row_chunks:  # more ranks than chunks: this one adds zeros
        return base, shuffled
    for r, j, perm in permutations(n, f, repeats, seed):
        for lo, hi in row_chunks:
            part = flat[lo:hi].copy()
            part[:, j] = flat[perm[lo:hi], j]
            shuffled[r, j] += confusion(y[lo:hi], predict(part.reshape((hi - lo,) + x.shape[1:])), n_classes)
    return base, shuffled


def importance(base: np.ndarray, shuffled: np.ndarray, names: list[str]) -> dict:
    """Metric drops (base minus shuffled) per feature: each repeat's, their mean and their
    standard deviation (population, ddof=0, as scikit-learn's permutation_importance)."""
    ref = report(base)
    repeats, f = shuffled.shape[:2]
    drops = {m: np.empty((f, repeats)) for m in METRICS}
    for r in range(repeats):
        for j in range(f):
            rep = report(shuffled[r, j])
            for m in METRICS:
                drops[m][j, r] = ref[m] - rep[m]
    feats = []
    for j in range(f):
        row = {"feature": names[j]}
        for m in METRICS:
            row[f"{m}_drop_mean"] = float(drops[m][j].mean())
            row[f"{m}_drop_std"] = float(drops[m][j].std())
            row[f"{m}_drops"] = drops[m][j].tolist()
        feats.append(row)
    return {"rows": int(base.sum()), "repeats": int(repeats), "base": {m: ref[m] for m in METRICS},
            "features": feats}
