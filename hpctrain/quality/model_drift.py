"""Model-level drift: a finished run's validation metric against the same metric of its final
model on new labelled shards.

The run directory gives both: ``result.json`` holds the validation metrics, and the final
checkpoint (``checkpoints/final.pt``, else the newest valid one) holds the weights, the class
list, the sample shape and the resolved config (for the model and the NaN policy). The model
is scored with the trainer's own preprocessing and confusion-matrix metrics, so scoring the
run's own validation split reproduces ``result.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hpctrain.quality import QualityError
from hpctrain.rundir import RunDir

# result.json metric -> (key of hpctrain.train.metrics.report or "loss", higher is better)
METRICS = {"val_accuracy": ("accuracy", True), "val_macro_f1": ("macro_f1", True), "val_loss": ("loss", False)}


def score(trained, manifest, split: str | None) -> dict:
    """Accuracy, macro F1 and mean cross-entropy of a :class:`hpctrain.predict.TrainedRun`
    on ``split`` of ``manifest``."""
    import torch

    from hpctrain.quality.io import local_chunks
    from hpctrain.train.metrics import confusion, report

    classes, shape = trained.classes, trained.sample_shape
    if getattr(trained, "regression", False):
        raise QualityError(f"{str(trained.run_dir)!r} is a regression model; model-level drift compares accuracy, "
                           "macro F1 and cross-entropy of a classifier. Compare features with 'hpctrain drift "
                           "REF CUR' (without --model), or score the new shards with 'hpctrain predict' (R^2)")
    if tuple(manifest.schema.sample_shape) != shape:
        raise QualityError(f"current shards {str(manifest.root)!r} have sample shape "
                           f"{tuple(manifest.schema.sample_shape)}, the model was trained on {shape}; "
                           "pass labelled shards made from the same columns")
    unknown = sorted(set(manifest.class_counts(split)) - set(classes))
    if any(manifest.class_counts(split).get(c, 0) for c in unknown):
        raise QualityError(f"current shards {str(manifest.root)!r} hold labels {unknown} the model never saw "
                           f"(its classes: {classes}); model drift needs the same label set")
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    loss_sum, n = 0.0, 0
    for _i, x, y in local_chunks(manifest, split):
        logits = torch.from_numpy(trained.logits(x))
        yb = trained.preprocess.labels(torch.from_numpy(y))
        loss_sum += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
        cm += confusion(yb.numpy(), logits.argmax(1).numpy(), k)
        n += len(yb)
    rep = report(cm)
    return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], "loss": loss_sum / max(n, 1), "rows": n}


def compare(ref: float, cur: float, higher_is_better: bool, tolerance: float) -> tuple[float, bool]:
    """(degradation, drift): degradation > 0 means worse on the new data."""
    worse = ref - cur if higher_is_better else cur - ref
    return worse, bool(worse > tolerance)


def model_drift(args) -> dict:
    from hpctrain.fileio import atomic_write_json
    from hpctrain.quality.io import check_out_dir, load_manifest

    if len(args.dirs) != 1:
        raise QualityError(f"drift --model RUN takes one CUR_DIR of labelled shards; got {args.dirs}")
    if not 0 <= args.tolerance < math.inf:  # NaN fails too: it would never compare, and JSON has no NaN
        raise QualityError(f"--tolerance {args.tolerance}: expected a finite, non-negative metric difference "
                           "(default 0.02)")
    metric = args.metric or "val_accuracy"
    if metric not in METRICS:
        raise QualityError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    run = Path(args.model)
    from hpctrain.predict import PredictError, load_run

    try:
        trained = load_run(run)
    except PredictError as e:
        raise QualityError(f"--model: {e}") from None
    result, ckpt = trained.result, trained.checkpoint
    if not isinstance(result.get("metrics"), dict):
        raise QualityError(f"{str(RunDir(run).result)!r} has no metrics; model drift needs a completed run "
                           "with metrics")
    if metric not in result["metrics"] or result["metrics"][metric] is None:
        raise QualityError(f"{str(RunDir(run).result)!r} has no {metric!r} (metrics: {sorted(result['metrics'])}); "
                           "train with a validation split, or choose another --metric")
    cur = load_manifest(args.dirs[0], args.cur_split, "current shard directory")
    check_out_dir(args.out, cur)
    got = score(trained, cur, args.cur_split)
    key, higher = METRICS[metric]
    ref_value = float(result["metrics"][metric])
    worse, drift = compare(ref_value, got[key], higher, args.tolerance)
    rec = {
        "kind": "model", "run": str(run), "checkpoint": str(ckpt), "current": str(cur.root),
        "cur_split": args.cur_split or "all", "cur_rows": got["rows"], "metric": metric,
        "reference_value": ref_value, "current_value": got[key], "degradation": worse, "tolerance": args.tolerance,
        "drift": drift, "current_metrics": got,
        "message": (f"{metric}: run {ref_value:.4f}, current data {got[key]:.4f} "
                    f"({'worse' if worse > 0 else 'not worse'} by {abs(worse):.4f}, tolerance {args.tolerance}); "
                    f"{'DRIFT' if drift else 'no drift'}"),
    }
    from hpctrain.quality.io import make_out_dir

    out = make_out_dir(args.out)
    atomic_write_json(out / "drift.json", rec)
    return rec
