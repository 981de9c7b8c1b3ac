"""``hpctrain compress``: int8 quantization (torch.ao) and global magnitude pruning, with a
before/after report and a guard on validation macro F1.

* Models with convolutions (``cnn``) get **static** quantization through FX graph mode:
  observers are calibrated on the run's training rows (imputed as in training), then the
  convolutions, Linear layers and activations run in int8. Models of Linear layers only
  (``mlp``, ``attention``) get **dynamic** quantization: int8 weights, activations quantized
  per batch at run time, which needs no calibration.
* ``--prune P`` removes the fraction P of all Conv/Linear weights with the smallest
  magnitude, globally (one threshold over every layer), and makes it permanent. A tensor is
  stored sparse (flat int32 indices + values) when that is smaller than dense.
* safetensors has no quantized dtypes, so a quantized tensor is stored as its int8 values
  plus its scale(s) and zero point(s); ``artifact.json`` records how each entry was stored,
  and :func:`hpctrain.serve.packing.restore` rebuilds the same quantized module structure and loads them back.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from hpctrain.errors import HpctrainError
from hpctrain.serve.packing import CompressError, _has_conv, finish, flatten, prepare, wrap


# -- measuring ------------------------------------------------------------------------------------
def _val_rows(data_dir, split):
    from hpctrain.data.shards import iter_arrays

    xs, ys = [], []
    for _, x, y in iter_arrays(data_dir, split):
        xs.append(x)
        ys.append(y)
    if not ys:
        raise CompressError(f"{str(data_dir)!r} has no rows in split {split!r}; the report and the guard need "
                            "validation rows: pass --data SHARDS with a validation split")
    return np.concatenate(xs), np.concatenate(ys)


def _scores(trained, x, y) -> dict:
    from hpctrain.train.metrics import confusion, report

    classes = np.asarray(trained.classes)
    pred = trained.predict(x)
    idx_true = np.searchsorted(classes, y)
    r = report(confusion(idx_true, np.searchsorted(classes, pred), len(classes)))
    return {"macro_f1": r["macro_f1"], "accuracy": r["accuracy"]}


def _latency_ms(trained, x, batch: int, seconds: float = 1.0) -> float:
    """CPU milliseconds per sample at ``batch`` rows per call (median of timed rounds)."""
    xb = np.resize(x, (batch, *x.shape[1:]))
    # warm up: numba compiles the imputer and the quantized backends build their kernels for
    # each new shape on the first calls, which would dominate a short median otherwise
    warm_end = time.perf_counter() + 0.3
    for i in range(1000):
        trained.predict_proba(xb)
        if i >= 20 and time.perf_counter() > warm_end:
            break
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        trained.predict_proba(xb)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch * 1e3


def _size(state: dict) -> int:
    from hpctrain.extras import require

    save = require("safetensors.torch", "hpctrain compress").save

    tensors, _ = flatten(state)
    return len(save(tensors))


def _params(model) -> tuple[int, int]:
    """(stored weights and biases, the nonzero ones), quantized tensors included."""
    import torch

    total = nonzero = 0
    for v in model.state_dict().values():
        for t in (v if isinstance(v, tuple) else (v,)):
            if not isinstance(t, torch.Tensor) or t.dim() == 0 or not (t.is_quantized or t.is_floating_point()):
                continue
            total += t.numel()
            nonzero += int(((t.dequantize() if t.is_quantized else t) != 0).sum())
    return total, nonzero


def _prune(model, amount: float) -> None:
    from torch import nn
    from torch.nn.utils import prune

    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in params:
        prune.remove(m, name)  # permanent: the mask is folded into the weight


def compress_run(src: str | Path, out: str | Path, *, quantize: str = "auto", prune: float = 0.0,
                 max_drop: float = 0.01, data: str | Path | None = None, calibration_rows: int = 1024,
                 force: bool = False, key=None) -> dict:
    """``hpctrain compress``: returns the report; raises :class:`CompressError` when the guard refuses."""
    import torch

    from hpctrain.config import to_dict
    from hpctrain.serve.artifact import _schema, _training_facts, _versions, load_model, write_artifact
    from hpctrain.trained import TrainedRun

    if quantize not in ("auto", "static", "dynamic", "none"):
        raise CompressError(f"--quantize {quantize!r}: expected auto, static, dynamic or none")
    if not 0.0 <= prune < 1.0:
        raise CompressError(f"--prune {prune}: expected a fraction in [0, 1), e.g. 0.5")
    if not max_drop >= 0:
        raise CompressError(f"--max-drop {max_drop}: expected >= 0 (a macro F1 difference, e.g. 0.01)")
    trained = load_model(src)
    if trained.regression:
        raise CompressError(f"{str(src)!r} is a regression model; compression's guard compares macro F1 of a "
                            "classifier. Serve the float export ('hpctrain export') instead")
    art = trained.result.get("artifact") or {}
    if art.get("compression"):
        raise CompressError(f"{str(src)!r} is already compressed; compress the run dir or its float export")
    cfg = trained.config
    data_dir = Path(data) if data is not None else Path(cfg.data.dir)
    val_split = cfg.data.val_split or "val"
    try:
        x_val, y_val = _val_rows(data_dir, val_split)
    except (OSError, HpctrainError) as e:
        if isinstance(e, CompressError):
            raise
        raise CompressError(f"cannot read the validation shards {str(data_dir)!r} ({e}); pass --data SHARDS") \
            from None
    method = quantize
    if method == "auto":
        method = "static" if _has_conv(trained.model) else "dynamic"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    total, nz = _params(trained.model)
    before = {**_scores(trained, x_val, y_val), "bytes": _size(trained.model.state_dict()),
              "params": total, "nonzero_params": nz, "latency_ms_batch1": _latency_ms(trained, x_val, 1),
              "latency_ms_batch64": _latency_ms(trained, x_val, 64)}
    model = copy.deepcopy(trained.model)
    if prune > 0:
        _prune(model, prune)
    if method != "none":
        prepared = prepare(model, method, trained.sample_shape)
        if method == "static":
            from hpctrain.data.shards import iter_arrays

            seen = 0
            with torch.no_grad():
                calibrate = wrap(prepared, method)
                for _, xb, _ in iter_arrays(data_dir, cfg.data.train_split):
                    xb = trained.preprocess.features(torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32)))
                    calibrate(xb)
                    seen += len(xb)
                    if seen >= calibration_rows:
                        break
            if not seen:
                raise CompressError(f"{str(data_dir)!r} has no {cfg.data.train_split!r} rows to calibrate "
                                    "static quantization on; pass --data SHARDS or --quantize dynamic")
        model = finish(prepared, method)
    model.eval()
    small = TrainedRun(trained.run_dir, trained.checkpoint, trained.result, cfg, trained.classes,
                       trained.sample_shape, wrap(model, method), trained.preprocess)
    total, nz = _params(model)
    after = {**_scores(small, x_val, y_val), "bytes": _size(model.state_dict()), "params": total,
             "nonzero_params": nz, "latency_ms_batch1": _latency_ms(small, x_val, 1),
             "latency_ms_batch64": _latency_ms(small, x_val, 64)}
    drop = before["macro_f1"] - after["macro_f1"]
    report = {"quantize": method, "prune": prune, "max_drop": max_drop, "before": before, "after": after,
              "f1_drop": drop, "size_ratio": before["bytes"] / max(after["bytes"], 1),
              "validation": {"data": str(data_dir), "split": val_split, "rows": int(len(y_val))}}
    if drop > max_drop:
        raise CompressError(f"macro F1 dropped by {drop:.4f} ({before['macro_f1']:.4f} -> {after['macro_f1']:.4f}) "
                            f"on {len(y_val)} validation rows, more than --max-drop {max_drop:g}; nothing written: "
                            "prune less, try --quantize dynamic or none, or raise --max-drop")
    tensors, specs = flatten(model.state_dict())
    comp = {"quantize": method, "prune": prune, "engine": torch.backends.quantized.engine if method != "none" else None,
            "sample_shape": list(trained.sample_shape), "entries": specs, "report": report}
    imp = trained.preprocess.imputer
    schema = _schema(cfg, trained.sample_shape)
    prov = art.get("provenance") or {"run_dir": str(Path(trained.run_dir).resolve()),
                                     "checkpoint": str(Path(trained.checkpoint).resolve()),
                                     "step": trained.result.get("step"), "epoch": trained.result.get("epoch"),
                                     "training": _training_facts(Path(trained.run_dir))}
    prov = {**prov, "compressed_from": str(Path(src).resolve()), "exported_with": _versions()}
    write_artifact(out, state=tensors, train_config=json.loads(json.dumps(to_dict(cfg))),
                   sample_shape=trained.sample_shape, classes=trained.classes,
                   class_names=art.get("class_names", schema["class_names"]),
                   feature_names=schema["feature_names"] or (art.get("input_schema") or {}).get("feature_names"),
                   imputer=imp.to_json() if imp is not None else None, on_nan=trained.preprocess.on_nan,
                   metrics=trained.result.get("metrics") or {}, provenance=prov, extra={"compression": comp},
                   force=force, key=key)
    report["out"] = str(out)
    return report
