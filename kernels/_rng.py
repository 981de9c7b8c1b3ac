"""The CPU kernels' random stream: a counter-based generator (splitmix64 finaliser).

Every element's draw is a pure function of (key, index), so a parallel kernel gives the
same output whatever the thread count or schedule; numba's own ``np.random`` inside
``prange`` keeps one state per thread and would not. The CUDA kernels use
``numba.cuda.random`` xoroshiro128p states instead, so CPU and CUDA noise differ by design.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_INV32 = 1.0 / 4294967296.0
_S40 = np.uint64(40)
_S16 = np.uint64(16)
_LOW24 = np.uint64(0xFFFFFF)
_INV24 = np.float32(1.0 / 16777216.0)
_TWO_PI32 = np.float32(6.283185307179586)
_MASK64 = (1 << 64) - 1


def stream_key(seed: int, counter: int) -> np.uint64:
    """The key of one kernel call: distinct (seed, counter) pairs give independent streams."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(counter) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _MASK64
    for _ in range(2):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return np.uint64(z)


@njit(inline="always", cache=True)
def mix64(key, idx):
    z = key + (np.uint64(idx) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always", cache=True)
def uniform(key, idx):
    """A float64 in [0, 1)."""
    return float(mix64(key, idx) >> _S32) * _INV32


@njit(cache=True)
def fill_normals(key, row, buf):
    """Fill ``buf`` with standard normals for stream position ``row``: Box-Muller in float32,
    both outputs of each pair used (cos and sin), two 24-bit uniforms from one 64-bit draw.
    Kernels that want the same noise for the same (key, row, len(buf)) call this."""
    m = buf.shape[0]
    half = (m + 1) // 2
    base = row * half
    for q in range(half):
        z = mix64(key, base + q)
        u1 = (np.float32(z >> _S40) + np.float32(0.5)) * _INV24  # in (0, 1): log never sees 0
        u2 = np.float32((z >> _S16) & _LOW24) * _INV24
        r = np.sqrt(np.float32(-2.0) * np.log(u1))
        t = _TWO_PI32 * u2
        buf[2 * q] = r * np.cos(t)
        if 2 * q + 1 < m:
            buf[2 * q + 1] = r * np.sin(t)
