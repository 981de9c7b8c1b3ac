"""Shared CUDA plumbing: wrapping arrays that expose ``__cuda_array_interface__`` and
picking launch shapes. Imported only when a device array is seen, so CPU users never load
``numba.cuda``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)


def is_torch(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "data_ptr")


def stream_for(x):
    """The stream to launch on: torch's current stream for a torch tensor (so the kernel is
    ordered with the surrounding torch work), numba's default stream otherwise."""
    if is_torch(x) and not SIMULATOR:
        import torch

        return cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
    return 0


def as_device(x):
    """A numba device array view of ``x`` (no copy)."""
    if type(x).__module__.startswith("numba.cuda"):  # already a numba (or simulator) device array
        return x
    return cuda.as_cuda_array(x)


def empty_like_kind(x, shape, dtype=np.float32):
    """A new device array of ``shape`` of the same kind as ``x`` (a torch tensor on the same
    device for torch input, a numba device array otherwise), plus its numba view."""
    if is_torch(x):
        import torch

        t = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=x.device)
        return t, cuda.as_cuda_array(t)
    a = cuda.device_array(shape, dtype=dtype)
    return a, a


def row_launch(n_rows: int, n_cols: int) -> tuple[int, tuple[int, int]]:
    """(blocks, (threads_x, threads_y)) for kernels where x walks the columns of a row and y
    walks rows grid-stride: consecutive threads touch consecutive addresses."""
    tx = 1 << max(0, min(5, math.ceil(math.log2(max(1, n_cols)))))
    ty = (32 if SIMULATOR else 256) // tx
    ty = max(1, ty)
    blocks = max(1, min(math.ceil(max(1, n_rows) / ty), 4 if SIMULATOR else 65535))
    return blocks, (tx, ty)


def flat_launch(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over ``n`` elements."""
    threads = 32 if SIMULATOR else 256
    cap = 4 if SIMULATOR else 8 * _sm_count()
    return max(1, min(math.ceil(max(1, n) / threads), cap)), threads


_SMS: list[int] = []


def _sm_count() -> int:
    if not _SMS:
        try:
            _SMS.append(int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
        except Exception:  # noqa: BLE001 - a device that will not say gets a safe default
            _SMS.append(80)
    return _SMS[0]


def state_count(n: int) -> int:
    """How many xoroshiro128p states a kernel over ``n`` elements gets: one per launched
    thread of a bounded grid (reused in grid-stride loops), never one per element."""
    blocks, threads = flat_launch(n)
    return blocks * threads
