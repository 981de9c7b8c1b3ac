"""CUDA transform for :class:`hpctrain.kernels.impute.Imputer`: fills NaNs of a device
array (numba device array, torch CUDA tensor, anything with ``__cuda_array_interface__``)
on the device. Imported lazily by ``Imputer.transform``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from hpctrain.kernels._cuda_common import as_device, empty_like_kind, is_torch, row_launch, stream_for


@cuda.jit
def fill_kernel(x, out, values, copy):
    """NaNs of ``x`` filled with ``values[column]``, into ``out``. In place (``out`` is ``x``,
    ``copy`` False) only the NaN elements are written; with ``copy`` every element is, and the
    pass reads once and writes once (a copy, then an in-place fill, would read twice)."""
    n, d = x.shape
    i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    istep = cuda.gridDim.x * cuda.blockDim.y
    while i < n:
        j = cuda.threadIdx.x
        while j < d:
            v = x[i, j]
            if v != v:
                out[i, j] = values[j]
            elif copy:
                out[i, j] = v
            j += cuda.blockDim.x
        i += istep


@cuda.jit
def fill_select_kernel(x, out, keep, values, indicator):
    n = x.shape[0]
    nk = keep.shape[0]
    no = out.shape[1]
    i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    istep = cuda.gridDim.x * cuda.blockDim.y
    while i < n:
        k = cuda.threadIdx.x
        while k < no:
            if k < nk:
                v = x[i, keep[k]]
                out[i, k] = values[k] if v != v else v
            else:
                v = x[i, indicator[k - nk]]
                out[i, k] = 1.0 if v != v else 0.0
            k += cuda.blockDim.x
        i += istep


def _plan_on_device(imp):
    keep, values, ind, identity = imp.plan()
    cached = imp._device_cache.get("plan")
    if cached is None:
        full = np.zeros(imp.n_features_in_, dtype=np.float32)
        full[keep] = values
        cached = (cuda.to_device(keep), cuda.to_device(values), cuda.to_device(np.maximum(ind, 0)),
                  cuda.to_device(full))
        imp._device_cache["plan"] = cached
    return cached, identity, len(keep) + len(ind)


def transform(imp, X, *, copy: bool = False):
    """Fill NaNs of device array ``X`` (rows x features, or rows x sample_shape).

    In place (returning ``X``) when nothing is dropped or appended and ``copy`` is False;
    otherwise a new device array of the same kind (torch in, torch out)."""
    from hpctrain.errors import ImputeError

    shape = tuple(X.shape)
    if len(shape) < 2:
        raise ImputeError(f"device array of shape {shape}: expected (rows, features) or (rows, *sample_shape)")
    n = shape[0]
    d = int(np.prod(shape[1:]))
    if d != imp.n_features_in_:
        raise ImputeError(f"X has {d} features per sample; this imputer was fitted on {imp.n_features_in_}")
    if is_torch(X):
        if X.dtype != __import__("torch").float32 or not X.is_contiguous():
            X = X.contiguous().float()  # on the device: no host round trip
            copy = False  # already a fresh tensor
    else:
        if np.dtype(X.dtype) != np.float32:
            raise ImputeError(f"device array has dtype {X.dtype}; expected float32 (convert it on the device)")
    stream = stream_for(X)
    (keep_d, values_d, ind_d, full_d), identity, n_out = _plan_on_device(imp)
    x2 = as_device(X).reshape(n, d)
    if identity and not copy:
        blocks, threads = row_launch(n, d)
        fill_kernel[blocks, threads, stream](x2, x2, full_d, False)
        return X
    if identity:
        out, out_view = empty_like_kind(X, shape)
        blocks, threads = row_launch(n, d)
        fill_kernel[blocks, threads, stream](x2, out_view.reshape(n, d), full_d, True)
        return out
    out, out_view = empty_like_kind(X, (n, n_out))
    blocks, threads = row_launch(n, n_out)
    fill_select_kernel[blocks, threads, stream](x2, out_view, keep_d, values_d, ind_d)
    return out
