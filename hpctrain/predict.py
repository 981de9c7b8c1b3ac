"""Load a finished training run and predict: the public API behind ``hpctrain predict``,
the farm's batch-inference task and model-level drift.

A run directory written by ``hpctrain train`` holds ``result.json`` and
``checkpoints/`` (``final.pt``, or the newest valid step checkpoint). The checkpoint
carries the resolved config, the class ids and the sample shape, so the model and its
preprocessing (imputation; never augmentation) are rebuilt exactly as trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from hpctrain.trained import PredictError, TrainedRun, load_run_dir  # noqa: F401 (the public API names them here)


def _predict_regression(trained: TrainedRun, m, split: str | None, out: Path, shards) -> dict:
    from hpctrain.fileio import atomic_path
    from hpctrain.train.metrics import regression_report, regression_sums

    files, rows, labels, preds = [], [], [], []
    for name, x, y in _chunks(m, split):
        files.append(np.full(len(y), name))
        rows.append(np.arange(len(y), dtype=np.int64))
        labels.append(y)
        preds.append(trained.predict(x))
    if not labels:
        raise PredictError(f"shards {str(shards)!r} have no rows in split {split or 'all'!r}")
    label, pred = np.concatenate(labels), np.concatenate(preds)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, shard=np.concatenate(files), row=np.concatenate(rows), label=label, pred=pred)
    rep = regression_report(regression_sums(pred.reshape(len(pred), -1), label.reshape(len(label), -1)))
    return {"out": str(out), "rows": int(len(label)), "mse": rep["mse"], "mae": rep["mae"], "r2": rep["r2"],
            "checkpoint": str(trained.checkpoint)}


def load_run(run_dir: str | Path) -> TrainedRun:
    """The final (or newest valid) checkpoint of a completed run, as a :class:`TrainedRun`;
    or a model artifact written by ``hpctrain export``/``compress`` (either is accepted)."""
    from hpctrain.serve.artifact import load_model

    return load_model(run_dir)


def _chunks(manifest, split: str | None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from hpctrain.data.shards import iter_arrays

    for info, x, y in iter_arrays(manifest, split):
        yield info.file, x, y


def predict_shards(run_dir: str | Path, shards: str | Path, out: str | Path, *, split: str | None = None) -> dict:
    """Predict every row of ``shards`` (one split or all) with the run's model.

    Writes ``out`` (an ``.npz``, atomically): ``shard`` (file name per row), ``row`` (index
    in its shard), ``label``, ``pred`` and ``proba`` (N × classes), plus ``classes``.
    Returns a summary with the accuracy against the shards' labels.
    """
    from hpctrain.data.shards import Manifest
    from hpctrain.fileio import atomic_path

    trained = load_run(run_dir)
    m = Manifest.load(shards)
    if tuple(m.schema.sample_shape) != trained.sample_shape:
        raise PredictError(f"shards {str(shards)!r} have sample shape {tuple(m.schema.sample_shape)}; the model was "
                           f"trained on {trained.sample_shape}; pass shards made from the same columns")
    out = Path(out)
    if out.suffix != ".npz":
        raise PredictError(f"--out {str(out)!r}: predictions are written as .npz; give a file name ending in .npz")
    if m.schema.targets != trained.targets:
        raise PredictError(f"shards {str(shards)!r} hold {m.schema.targets or 'no'} regression target(s), the model "
                           f"was trained on {trained.targets or 'class labels'}; pass shards of the same task")
    if trained.regression:
        return _predict_regression(trained, m, split, out, shards)
    files, rows, labels, preds, probas = [], [], [], [], []
    for name, x, y in _chunks(m, split):
        p = trained.predict_proba(x)
        files.append(np.full(len(y), name))
        rows.append(np.arange(len(y), dtype=np.int64))
        labels.append(y)
        preds.append(np.asarray(trained.classes, dtype=np.int64)[p.argmax(axis=1)])
        probas.append(p)
    if not labels:
        raise PredictError(f"shards {str(shards)!r} have no rows in split {split or 'all'!r}")
    label, pred = np.concatenate(labels), np.concatenate(preds)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, shard=np.concatenate(files), row=np.concatenate(rows), label=label, pred=pred,
                     proba=np.concatenate(probas), classes=np.asarray(trained.classes, dtype=np.int64))
    return {"out": str(out), "rows": int(len(label)), "accuracy": float((label == pred).mean()),
            "checkpoint": str(trained.checkpoint)}
