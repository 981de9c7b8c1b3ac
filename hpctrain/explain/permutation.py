"""Permutation importance: how much the model's score drops when one feature's values are
shuffled across the rows (breaking its link to the label, keeping its distribution).
Classifiers: accuracy and macro F1; regression: R^2 and MSE.

Each rank scores its own chunks of rows and returns sums that add up over ranks (confusion
counts; regression's error sums), so the metrics are those of one process (confusion counts
exactly: they are integers). The shuffles come from one seeded generator in a fixed order
(repeat, then feature) that every rank replays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hpctrain.train.metrics import confusion, regression_report, regression_sums, report

# metric -> +1 when higher is better (its loss is a "drop"), -1 when lower is (an "increase")
CLASSIFICATION = (("accuracy", 1), ("macro_f1", 1))
REGRESSION = (("r2", 1), ("mse", -1))


def metrics_for(regression: bool) -> tuple[tuple[str, int], ...]:
    return REGRESSION if regression else CLASSIFICATION


def change_key(metric: str, sign: int) -> str:
    """The name of a metric's loss of quality: ``macro_f1_drop``, ``mse_increase``."""
    return f"{metric}_drop" if sign > 0 else f"{metric}_increase"


def permutations(n_rows: int, n_features: int, repeats: int, seed: int):
    """Yield ``(repeat, feature, perm)`` in the one order every rank uses."""
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        for j in range(n_features):
            yield r, j, rng.permutation(n_rows)


def _sums(outputs: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Summable statistics of one chunk: a confusion matrix (classes), or regression_sums."""
    if n_classes:
        return confusion(y, outputs.argmax(axis=1), n_classes).astype(np.float64)
    return regression_sums(outputs, y)


def score_sums(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, n_classes: int,
               row_chunks: list[tuple[int, int]], repeats: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Score sums over ``row_chunks`` (this rank's part of the rows): unshuffled, and shuffled
    as ``(repeats, features, ...)``. ``forward`` maps a batch of inputs to the model's outputs;
    ``n_classes`` is 0 for regression (``y`` then holds the targets). The flattened columns of
    ``x`` (N, *sample_shape) are the features."""
    n = len(x)
    flat = x.reshape(n, -1)
    f = flat.shape[1]
    # regression_sums: 5 sums (n, sse, sae, sum y, sum y^2) per target
    shape = (n_classes, n_classes) if n_classes else (5, y.shape[1] if y.ndim > 1 else 1)
    base = np.zeros(shape)
    shuffled = np.zeros((repeats, f) + shape)
    if not row_chunks:  # more ranks than chunks: this one adds zeros
        return base, shuffled
    for lo, hi in row_chunks:
        base += _sums(forward(x[lo:hi]), y[lo:hi], n_classes)
    for r, j, perm in permutations(n, f, repeats, seed):
        for lo, hi in row_chunks:
            part = flat[lo:hi].copy()
            part[:, j] = flat[perm[lo:hi], j]
            shuffled[r, j] += _sums(forward(part.reshape((hi - lo,) + x.shape[1:])), y[lo:hi], n_classes)
    return base, shuffled


def scores(sums: np.ndarray, regression: bool) -> dict:
    return regression_report(sums) if regression else report(sums)


def importance(base: np.ndarray, shuffled: np.ndarray, names: list[str], regression: bool) -> dict:
    """Each metric's loss per feature (base minus shuffled; for MSE shuffled minus base): each
    repeat's, their mean and their standard deviation (population, ddof=0, as scikit-learn's
    permutation_importance)."""
    metrics = metrics_for(regression)
    ref = scores(base, regression)
    repeats, f = shuffled.shape[:2]
    loss = {m: np.empty((f, repeats)) for m, _ in metrics}
    for r in range(repeats):
        for j in range(f):
            rep = scores(shuffled[r, j], regression)
            for m, sign in metrics:
                loss[m][j, r] = sign * (ref[m] - rep[m])
    feats = []
    for j in range(f):
        row = {"feature": names[j]}
        for m, sign in metrics:
            k = change_key(m, sign)
            row[f"{k}_mean"] = float(loss[m][j].mean())
            row[f"{k}_std"] = float(loss[m][j].std())
            row[f"{k}s"] = loss[m][j].tolist()
        feats.append(row)
    rows = base[0].sum() / max(base.shape[1], 1) if regression else base.sum()
    return {"rows": int(round(float(rows))), "repeats": int(repeats), "base": {m: ref[m] for m, _ in metrics},
            "primary": "r2_drop" if regression else "macro_f1_drop",  # what the chart shows
            "features": feats}
