"""CUDA augmentation kernels: the same operations and parameters as
:mod:`hpctrain.kernels._augment_cpu`, for arrays already on the device.

Per-sample parameters arrive as small device arrays drawn on the host, so for them CPU and
CUDA give the same output. Per-element noise uses ``numba.cuda.random`` xoroshiro128p
states: a bounded number (one per thread of a bounded grid), each reused across the
thread's grid-stride loop, never one per element. Imported lazily.
"""

from __future__ import annotations

import math

from numba import cuda, float32, float64, int64
from numba.cuda.random import xoroshiro128p_normal_float32, xoroshiro128p_uniform_float32

SMOTE_MAX_K = 16


@cuda.jit
def flip_kernel(x, out, fh, fv):
    n, c, h, w = x.shape
    total = n * c * h * w
    e = cuda.grid(1)
    while e < total:
        j = e % w
        t = e // w
        i = t % h
        t = t // h
        ch = t % c
        s = t // c
        si = h - 1 - i if fv[s] else i
        sj = w - 1 - j if fh[s] else j
        out[s, ch, i, j] = x[s, ch, si, sj]
        e += cuda.gridsize(1)


@cuda.jit
def crop_kernel(x, out, dy, dx, pad):
    n, c, h, w = x.shape
    total = n * c * h * w
    e = cuda.grid(1)
    while e < total:
        j = e % w
        t = e // w
        i = t % h
        t = t // h
        ch = t % c
        s = t // c
        si = i + dy[s] - pad
        sj = j + dx[s] - pad
        if si >= 0 and si < h and sj >= 0 and sj < w:
            out[s, ch, i, j] = x[s, ch, si, sj]
        else:
            out[s, ch, i, j] = 0.0
        e += cuda.gridsize(1)


@cuda.jit
def gaussian_kernel(x, out, apply, mean, std, states):
    """x, out: (N, M) views. One state per thread, reused across its grid-stride loop."""
    n, m = x.shape
    total = n * m
    tid = cuda.grid(1)
    e = tid
    while e < total:
        s = e // m
        k = e - s * m
        v = x[s, k]
        if apply[s]:
            v += mean + std * xoroshiro128p_normal_float32(states, tid)
        out[s, k] = v
        e += cuda.gridsize(1)


@cuda.jit
def salt_pepper_kernel(x, out, apply, amount, salt, pepper, states):
    n, m = x.shape
    total = n * m
    tid = cuda.grid(1)
    half = amount / 2.0
    e = tid
    while e < total:
        s = e // m
        k = e - s * m
        v = x[s, k]
        if apply[s]:
            u = xoroshiro128p_uniform_float32(states, tid)
            if u < half:
                v = pepper
            elif u < amount:
                v = salt
        out[s, k] = v
        e += cuda.gridsize(1)


@cuda.jit
def cutout_kernel(x, out, y0, y1, x0, x1, value):
    n, c, h, w = x.shape
    total = n * c * h * w
    e = cuda.grid(1)
    while e < total:
        j = e % w
        t = e // w
        i = t % h
        s = t // (h * c)
        ch = (t // h) % c
        if i >= y0[s] and i < y1[s] and j >= x0[s] and j < x1[s]:
            out[s, ch, i, j] = value
        else:
            out[s, ch, i, j] = x[s, ch, i, j]
        e += cuda.gridsize(1)


JITTER_THREADS = 128


@cuda.jit
def jitter_kernel(x, out, bright, contrast):
    """x, out: (N, M) views; one block per sample (grid-stride over samples), a shared
    float64 tree reduction for the sample mean."""
    n, m = x.shape
    partial = cuda.shared.array(JITTER_THREADS, dtype=float64)
    tx = cuda.threadIdx.x
    s = cuda.blockIdx.x
    while s < n:
        acc = 0.0
        k = tx
        while k < m:
            acc += x[s, k]
            k += JITTER_THREADS
        partial[tx] = acc
        cuda.syncthreads()
        step = JITTER_THREADS // 2
        while step > 0:
            if tx < step:
                partial[tx] += partial[tx + step]
            cuda.syncthreads()
            step //= 2
        mu = partial[0] / max(m, 1)
        c = float64(contrast[s])
        b = float64(bright[s])
        k = tx
        while k < m:
            out[s, k] = float32((x[s, k] - mu) * c + mu + b)
            k += JITTER_THREADS
        cuda.syncthreads()  # partial[] is reused by the next sample of this block
        s += cuda.gridDim.x


@cuda.jit
def mixup_kernel(x, out, perm, lam):
    n, m = x.shape
    total = n * m
    e = cuda.grid(1)
    while e < total:
        s = e // m
        k = e - s * m
        a = lam[s]
        out[s, k] = a * x[s, k] + (float32(1.0) - a) * x[perm[s], k]
        e += cuda.gridsize(1)


@cuda.jit
def column_std_kernel(x, std):
    n, d = x.shape
    j = cuda.grid(1)
    while j < d:
        mu = 0.0
        for i in range(n):
            mu += x[i, j]
        mu /= max(n, 1)
        acc = 0.0
        for i in range(n):
            t = x[i, j] - mu
            acc += t * t
        std[j] = math.sqrt(acc / max(n, 1))
        j += cuda.gridsize(1)


@cuda.jit
def tabular_noise_kernel(x, out, apply, std, scale, states):
    n, d = x.shape
    total = n * d
    tid = cuda.grid(1)
    e = tid
    while e < total:
        i = e // d
        j = e - i * d
        v = x[i, j]
        if apply[i]:
            v += scale * std[j] * xoroshiro128p_normal_float32(states, tid)
        out[i, j] = v
        e += cuda.gridsize(1)


@cuda.jit
def smote_kernel(x, out, y, select, u, r, k):
    n, d = x.shape
    best_d = cuda.local.array(SMOTE_MAX_K, dtype=float64)
    best_j = cuda.local.array(SMOTE_MAX_K, dtype=int64)
    i = cuda.grid(1)
    while i < n:
        for e in range(d):
            out[i, e] = x[i, e]
        if select[i]:
            found = 0
            for j in range(n):
                if j == i or y[j] != y[i]:
                    continue
                dist = 0.0
                for e in range(d):
                    t = float64(x[j, e]) - float64(x[i, e])
                    dist += t * t
                if found < k or dist < best_d[k - 1]:
                    pos = min(found, k - 1)
                    while pos > 0 and best_d[pos - 1] > dist:
                        best_d[pos] = best_d[pos - 1]
                        best_j[pos] = best_j[pos - 1]
                        pos -= 1
                    best_d[pos] = dist
                    best_j[pos] = j
                    found = min(found + 1, k)
            if found > 0:
                j = int(best_j[r[i] % found])
                t = u[i]
                for e in range(d):
                    out[i, e] = x[i, e] + t * (x[j, e] - x[i, e])
        i += cuda.gridsize(1)
