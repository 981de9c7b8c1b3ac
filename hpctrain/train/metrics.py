"""Classification metrics from a confusion matrix: accuracy, per-class precision/recall/F1,
macro F1. Confusion matrices add up across ranks, so the distributed value is exact."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class (sklearn's convention)."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def report(cm: np.ndarray) -> dict:
    """Metrics of a confusion matrix; undefined ratios (0/0) count as 0, as sklearn's zero_division=0.

    Macro averages run over the classes present in the true labels or the predictions.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    seen = (support + predicted) > 0
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "macro_recall": float(recall[seen].mean()) if seen.any() else 0.0,
        "per_class_precision": precision.tolist(),
        "per_class_recall": recall.tolist(),
        "per_class_f1": f1.tolist(),
        "support": support.astype(int).tolist(),
    }


def regression_sums(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-target sums that add up over ranks: [n, sum err^2, sum |err|, sum y, sum y^2] x targets."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    true = np.asarray(true, dtype=np.float64).reshape(len(true), -1)
    err = pred - true
    n = np.full(true.shape[1], float(len(true)))
    return np.stack([n, (err ** 2).sum(0), np.abs(err).sum(0), true.sum(0), (true ** 2).sum(0)])


def regression_report(sums: np.ndarray) -> dict:
    """MSE, MAE (over every target value) and R^2 (the mean over targets of 1 - SSE/SST, as
    sklearn's r2_score with multioutput='uniform_average') from summed :func:`regression_sums`."""
    n, sse, sae, sy, syy = np.asarray(sums, dtype=np.float64)
    count = float(n.sum())
    sst = syy - sy ** 2 / np.maximum(n, 1.0)
    r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), 0.0)
    return {"mse": float(sse.sum() / max(count, 1.0)), "mae": float(sae.sum() / max(count, 1.0)),
            "r2": float(r2.mean()), "r2_per_target": r2.tolist()}
