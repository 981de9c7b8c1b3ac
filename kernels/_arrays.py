"""Host-array conversion shared by the kernels' Python entry points."""

from __future__ import annotations

import numpy as np


def as_float32(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """(C-contiguous float32 copy or view of ``a``, whether a finite wider float overflowed to inf).

    The caller raises its own error for an overflow: a value beyond float32's range cannot be
    held by a float32 output, and numpy would turn it into inf without a word."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(a, dtype=np.float32)
    overflow = a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size > 0 and bool(
        np.any(np.isinf(out) & np.isfinite(a)))
    return out, overflow
