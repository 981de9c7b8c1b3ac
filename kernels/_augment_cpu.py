"""CPU (numba ``njit(parallel=True)``) augmentation kernels.

Every kernel is deterministic given its arguments: per-sample random parameters (flip
flags, crop offsets, boxes, factors) are drawn by the caller, and per-element noise comes
from the counter-based stream in :mod:`hpctrain.kernels._rng`, indexed by the element's
flat position, so a fused kernel and the sequence of single-op kernels agree exactly.
Image batches are (N, C, H, W) float32, tabular batches (N, D) float32, all C-contiguous.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hpctrain.kernels._rng import fill_normals, uniform


@njit(parallel=True, cache=True)
def flip(x, out, fh, fv):
    n, c, h, w = x.shape
    for p in prange(n * c):
        s = p // c
        ch = p - s * c
        for i in range(h):
            si = h - 1 - i if fv[s] else i
            if fh[s]:
                for j in range(w):
                    out[s, ch, i, j] = x[s, ch, si, w - 1 - j]
            else:
                for j in range(w):
                    out[s, ch, i, j] = x[s, ch, si, j]


@njit(parallel=True, cache=True)
def crop(x, out, dy, dx, pad):
    """out = the (H, W) window at (dy, dx) of x zero-padded by ``pad`` on every side."""
    n, c, h, w = x.shape
    for p in prange(n * c):
        s = p // c
        ch = p - s * c
        oy = dy[s] - pad
        ox = dx[s] - pad
        for i in range(h):
            si = i + oy
            for j in range(w):
                sj = j + ox
                inside = si >= 0 and si < h and sj >= 0 and sj < w
                out[s, ch, i, j] = x[s, ch, si, sj] if inside else np.float32(0.0)


@njit(parallel=True, cache=True)
def gaussian(x, out, apply, mean, std, key):
    """out = x + mean + std * z for the samples with ``apply`` set; z from stream ``key``."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    of = out.reshape(n, -1)
    m = xf.shape[1]
    for s in prange(n):
        if apply[s]:
            z = np.empty(m, dtype=np.float32)
            fill_normals(key, s, z)
            mu = np.float32(mean)
            sd = np.float32(std)
            for e in range(m):
                of[s, e] = xf[s, e] + (mu + sd * z[e])
        else:
            for e in range(m):
                of[s, e] = xf[s, e]


@njit(parallel=True, cache=True)
def salt_pepper(x, out, apply, amount, salt, pepper, key):
    """Each element of an applied sample becomes ``pepper`` with probability amount/2 and
    ``salt`` with probability amount/2."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    of = out.reshape(n, -1)
    m = xf.shape[1]
    half = amount / 2.0
    for s in prange(n):
        base = s * m
        for e in range(m):
            v = xf[s, e]
            if apply[s]:
                u = uniform(key, base + e)
                if u < half:
                    v = pepper
                elif u < amount:
                    v = salt
            of[s, e] = v


@njit(parallel=True, cache=True)
def cutout(x, out, y0, y1, x0, x1, value):
    """Copy x to out with the box [y0, y1) x [x0, x1) of each sample set to ``value``."""
    n, c, h, w = x.shape
    for p in prange(n * c):
        s = p // c
        ch = p - s * c
        for i in range(h):
            row_in = i >= y0[s] and i < y1[s]
            for j in range(w):
                inside = row_in and j >= x0[s] and j < x1[s]
                out[s, ch, i, j] = value if inside else x[s, ch, i, j]


@njit(parallel=True, cache=True)
def jitter(x, out, bright, contrast):
    """out = (x - m) * contrast + m + bright, m the sample's mean over C, H, W."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    of = out.reshape(n, -1)
    m = xf.shape[1]
    for s in prange(n):
        acc = 0.0
        for e in range(m):
            acc += xf[s, e]
        mu = acc / max(m, 1)
        c = np.float64(contrast[s])
        b = np.float64(bright[s])
        for e in range(m):
            of[s, e] = np.float32((xf[s, e] - mu) * c + mu + b)


@njit(parallel=True, cache=True)
def mixup(x, out, perm, lam):
    """out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]] (any trailing shape)."""
    n = x.shape[0]
    xf = x.reshape(n, -1)
    of = out.reshape(n, -1)
    m = xf.shape[1]
    for s in prange(n):
        a = np.float32(lam[s])
        b = np.float32(1.0) - a
        t = perm[s]
        for e in range(m):
            of[s, e] = a * xf[s, e] + b * xf[t, e]


@njit(parallel=True, cache=True)
def fused_image(x, out, fh, fv, dy, dx, pad, apply, mean, std, key, y0, y1, x0, x1, value):
    """flip -> crop -> gaussian -> cutout in one pass; neutral parameters (no flip,
    dy = dx = pad, apply = 0, an empty box) switch a stage off. Equal, element for element,
    to running the four kernels in that order."""
    n, c, h, w = x.shape
    plane = h * w
    mu = np.float32(mean)
    sd = np.float32(std)
    for s in prange(n):
        z = np.zeros(c * plane, dtype=np.float32)
        if apply[s]:
            fill_normals(key, s, z)
            for e in range(c * plane):
                z[e] = mu + sd * z[e]
        oy = dy[s] - pad
        ox = dx[s] - pad
        for ch in range(c):
            for i in range(h):
                si = i + oy
                row_ok = si >= 0 and si < h
                ri = h - 1 - si if fv[s] else si
                row_in = i >= y0[s] and i < y1[s]
                zb = ch * plane + i * w
                for j in range(w):
                    sj = j + ox
                    if row_ok and sj >= 0 and sj < w:
                        v = x[s, ch, ri, w - 1 - sj if fh[s] else sj]
                    else:
                        v = np.float32(0.0)
                    v = v + z[zb + j]
                    if row_in and j >= x0[s] and j < x1[s]:
                        v = value
                    out[s, ch, i, j] = v


@njit(parallel=True, cache=True)
def column_std(x):
    """Population standard deviation of each column (float64 accumulation)."""
    n, d = x.shape
    mu = np.zeros(d)
    for i in range(n):
        for j in range(d):
            mu[j] += x[i, j]
    mu /= max(n, 1)
    var = np.zeros(d)
    for j in prange(d):
        acc = 0.0
        for i in range(n):
            t = x[i, j] - mu[j]
            acc += t * t
        var[j] = acc / max(n, 1)
    return np.sqrt(var).astype(np.float32)


@njit(parallel=True, cache=True)
def tabular_noise(x, out, apply, std, scale, key):
    """out = x + scale * std[j] * z for the rows with ``apply`` set."""
    n, d = x.shape
    for i in prange(n):
        if apply[i]:
            z = np.empty(d, dtype=np.float32)
            fill_normals(key, i, z)
            for j in range(d):
                out[i, j] = x[i, j] + np.float32(scale * std[j]) * z[j]
        else:
            for j in range(d):
                out[i, j] = x[i, j]


@njit(parallel=True, cache=True)
def smote(x, out, y, select, u, r, k):
    """For each selected row i: among the other rows of its class, take the ``k`` nearest
    (squared Euclidean; ties by row index), pick number ``r[i] % min(k, available)`` of
    them, j, and set out[i] = x[i] + u[i] * (x[j] - x[i]). Other rows are copied."""
    n, d = x.shape
    for i in prange(n):
        for e in range(d):
            out[i, e] = x[i, e]
        if not select[i]:
            continue
        best_d = np.full(k, np.inf)
        best_j = np.full(k, -1, dtype=np.int64)
        found = 0
        for j in range(n):
            if j == i or y[j] != y[i]:
                continue
            dist = 0.0
            for e in range(d):
                t = np.float64(x[j, e]) - np.float64(x[i, e])
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
        if found == 0:
            continue
        j = best_j[r[i] % found]
        t = np.float32(u[i])
        for e in range(d):
            out[i, e] = x[i, e] + t * (x[j, e] - x[i, e])
