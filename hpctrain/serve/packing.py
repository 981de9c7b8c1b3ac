"""How a compressed model is stored and rebuilt: the quantized module structure (torch.ao),
and the flattening of its state into plain safetensors entries.

safetensors has no quantized dtypes, so a quantized tensor is stored as its int8 values plus
its scale(s) and zero point(s), and a pruned tensor sparse (flat int32 indices + values) when
that is smaller than dense; ``artifact.json`` records how each entry was stored. This module
is what loading an artifact needs; ``hpctrain.serve.compress`` (which makes artifacts) builds
on it, so loading never imports the compression command.
"""

from __future__ import annotations

import math
from typing import Any

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
