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
  and :func:`restore` rebuilds the same quantized module structure and loads them back.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.errors import HpctrainError


class CompressError(HpctrainError):
    """A model cannot be compressed as asked, or the guard refused the result."""


# -- quantized structure ------------------------------------------------------------------------
def _has_conv(model) -> bool:
    from torch import nn

    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _quiet():
    import warnings

    w = warnings.catch_warnings()
    w.__enter__()
    # torch.ao warns on every quantized module it builds (deprecations, reduce_range); the
    # user can do nothing about them here
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    return w


def prepare(model, method: str, sample_shape):
    w = _quiet()
    try:
        return _prepare(model, method, sample_shape)
    finally:
        w.__exit__(None, None, None)


def _prepare(model, method: str, sample_shape):
    import torch

    if method == "dynamic":
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    example = (torch.zeros((1, *sample_shape)),)
    return prepare_fx(model, get_default_qconfig_mapping(torch.backends.quantized.engine), example)


def finish(prepared, method: str):
    if method == "dynamic":
        return prepared
    from torch.ao.quantization.quantize_fx import convert_fx

    w = _quiet()
    try:
        return convert_fx(prepared)
    finally:
        w.__exit__(None, None, None)


class _Int8:
    """Callable wrapper of a quantized model. torch's quantized kernels have no deterministic
    variant, and the trainer turns deterministic algorithms on for the whole process, so a
    process that trained (a test, an update) could not run them; they are allowed per call."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x):
        import torch

        was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        if not was:
            return self.inner(x)
        torch.use_deterministic_algorithms(False)
        try:
            return self.inner(x)
        finally:
            torch.use_deterministic_algorithms(True, warn_only=warn)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def wrap(model, method: str):
    return model if method in (None, "none") else _Int8(model)


# -- storing quantized state dicts in safetensors -----------------------------------------------
def flatten(state: dict) -> tuple[dict, dict]:
    """(plain tensors for safetensors, how to rebuild each state-dict entry)."""
    import torch

    tensors: dict[str, Any] = {}

    def put(key: str, v) -> dict:
        if v is None:
            return {"type": "none"}
        if isinstance(v, (torch.dtype, torch.qscheme)):
            return {"type": "dtype", "value": str(v).removeprefix("torch.")}
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"type": "number", "value": v}
        if isinstance(v, (tuple, list)):
            return {"type": "tuple", "items": [put(f"{key}.{i}", e) for i, e in enumerate(v)]}
        if not isinstance(v, torch.Tensor):
            raise CompressError(f"state entry {key!r} is a {type(v).__name__}; cannot store it")
        if v.is_quantized:
            spec = {"type": "quantized", "dtype": str(v.dtype).removeprefix("torch.")}
            if v.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                spec.update(scheme="tensor", scale=float(v.q_scale()), zero_point=int(v.q_zero_point()))
            else:
                spec.update(scheme="channel", axis=int(v.q_per_channel_axis()))
                tensors[key + ".scales"] = v.q_per_channel_scales().to(torch.float64).contiguous()
                tensors[key + ".zero_points"] = v.q_per_channel_zero_points().to(torch.int64).contiguous()
            spec["data"] = _put_dense_or_sparse(tensors, key, v.int_repr())
            return spec
        return {"type": "tensor", "data": _put_dense_or_sparse(tensors, key, v)}

    specs = {k: put(k, v) for k, v in state.items()}
    return tensors, specs


def _put_dense_or_sparse(tensors: dict, key: str, t) -> dict:
    import torch

    t = t.detach().cpu().contiguous()
    flat = t.reshape(-1)
    nz = torch.nonzero(flat).reshape(-1)
    dense = flat.numel() * t.element_size()
    sparse = nz.numel() * (4 + t.element_size())
    if t.dim() > 0 and sparse < dense:
        tensors[key + ".idx"] = nz.to(torch.int32)
        tensors[key + ".val"] = flat[nz].contiguous()
        return {"layout": "sparse", "shape": list(t.shape)}
    tensors[key] = t
    return {"layout": "dense"}


def _get_dense_or_sparse(tensors: dict, key: str, spec: dict):
    import torch

    if spec["layout"] == "sparse":
        val = tensors[key + ".val"]
        out = torch.zeros(math.prod(spec["shape"]), dtype=val.dtype)
        out[tensors[key + ".idx"].long()] = val
        return out.reshape(spec["shape"])
    return tensors[key]


def unflatten(tensors: dict, specs: dict) -> dict:
    import torch

    def get(key: str, spec: dict):
        kind = spec["type"]
        if kind == "none":
            return None
        if kind == "dtype":
            return getattr(torch, spec["value"])
        if kind == "number":
            return spec["value"]
        if kind == "tuple":
            return tuple(get(f"{key}.{i}", s) for i, s in enumerate(spec["items"]))
        data = _get_dense_or_sparse(tensors, key, spec["data"])
        if kind == "tensor":
            return data
        qdtype = getattr(torch, spec["dtype"])
        if spec["scheme"] == "tensor":
            return torch._make_per_tensor_quantized_tensor(data, spec["scale"], spec["zero_point"])
        q = torch._make_per_channel_quantized_tensor(data, tensors[key + ".scales"], tensors[key + ".zero_points"],
                                                     spec["axis"])
        if q.dtype != qdtype:
            raise ValueError(f"{key}: stored as {q.dtype}, described as {qdtype}")
        return q

    try:
        return {k: get(k, s) for k, s in specs.items()}
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CompressError(f"the compressed weights do not match their description in artifact.json ({e}); "
                            "re-run 'hpctrain compress'") from None


def restore(model, comp: dict, tensors: dict):
    """The compressed model of ``comp`` (from artifact.json), weights loaded from ``tensors``."""
    import torch

    method = comp.get("quantize")
    if method in ("static", "dynamic"):
        if comp.get("engine"):
            torch.backends.quantized.engine = comp["engine"]
        # observers that never saw data: their values are overwritten by load_state_dict next
        model = finish(prepare(model, method, tuple(comp["sample_shape"])), method)
    from collections import OrderedDict

    state = OrderedDict(unflatten(tensors, comp["entries"]))
    # quantized modules read their format version from the state dict's metadata; without it
    # they take the entries for a legacy layout
    state._metadata = getattr(model.state_dict(), "_metadata", None)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise CompressError(f"the compressed weights do not fit the model ({first}); re-run 'hpctrain compress'") \
            from None
    model.eval()
    return wrap(model, method)


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
    from safetensors.torch import save

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
                 force: bool = False) -> dict:
    """``hpctrain compress``: returns the report; raises :class:`CompressError` when the guard refuses."""
    import torch

    from hpctrain.config import to_dict
    from hpctrain.predict import TrainedRun, load_run
    from hpctrain.serve.artifact import _schema, _training_facts, _versions, write_artifact

    if quantize not in ("auto", "static", "dynamic", "none"):
        raise CompressError(f"--quantize {quantize!r}: expected auto, static, dynamic or none")
    if not 0.0 <= prune < 1.0:
        raise CompressError(f"--prune {prune}: expected a fraction in [0, 1), e.g. 0.5")
    if not max_drop >= 0:
        raise CompressError(f"--max-drop {max_drop}: expected >= 0 (a macro F1 difference, e.g. 0.01)")
    trained = load_run(src)
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
                   force=force)
    report["out"] = str(out)
    return report
