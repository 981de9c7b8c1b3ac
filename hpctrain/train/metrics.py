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


# -- the metric registry (``metrics.extra``) -------------------------------------------------------
def _accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float((outputs.argmax(1) == targets).mean())


def _macro_f1(outputs: np.ndarray, targets: np.ndarray) -> float:
    k = outputs.shape[1]
    return report(confusion(targets, outputs.argmax(1), k))["macro_f1"]


def _regression(key: str):
    def fn(outputs: np.ndarray, targets: np.ndarray) -> float:
        return regression_report(regression_sums(outputs, targets))[key]

    fn.__name__ = key
    return fn


# name -> fn(outputs (N, K) float, targets (N,) class indices or (N,)/(N, k) floats) -> float
BUILTIN_METRICS = {"accuracy": _accuracy, "macro_f1": _macro_f1, "mse": _regression("mse"),
                   "mae": _regression("mae"), "r2": _regression("r2")}


def metric_name(spec: str) -> str:
    """The key a metric is reported under (without the ``val_`` prefix): its built-in name, or
    the last part of its import path."""
    return spec.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def resolve_metrics(specs) -> dict:
    """``{name: fn}`` for ``metrics.extra``: built-in names or ``package.module:function``."""
    from hpctrain.errors import ConfigError
    from hpctrain.train.models import import_object

    out = {}
    for i, spec in enumerate(specs):
        fn = BUILTIN_METRICS.get(spec) or import_object(spec, f"metrics.extra[{i}]")
        if not callable(fn):
            raise ConfigError(f"metrics.extra[{i}]: {spec!r} is a {type(fn).__name__}, expected a function "
                              "(outputs, targets) -> float")
        name = metric_name(spec)
        if name in out:
            raise ConfigError(f"metrics.extra[{i}]: a second metric named {name!r}; metrics are reported as "
                              "val_<function name>, so give each a distinct name")
        out[name] = fn
    return out


def compute_metrics(fns: dict, outputs: np.ndarray, targets: np.ndarray) -> dict:
    """``{"val_<name>": float}``; a metric that fails or returns no number is a one-line error."""
    from hpctrain.errors import HpctrainError

    got = {}
    for name, fn in fns.items():
        try:
            v = float(fn(outputs, targets))
        except Exception as e:  # noqa: BLE001 - user code: name it in one line
            raise HpctrainError(f"metrics.extra: {name!r} on outputs {outputs.shape} and targets {targets.shape} "
                                f"raised {type(e).__name__}: {e}") from e
        got[f"val_{name}"] = v
    return got
