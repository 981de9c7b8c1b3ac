"""CUDA augmentation kernels: the same operations and parameters as
:mod:`hpctrain.kernels._augment_cpu`, for arrays already on the device.

Per-sample parameters arrive as small device arrays drawn on the host, so for them CPU and
CUDA give the same output. Per-element noise uses ``numba.cuda.random`` xoroshiro128p
states: a bounded number (one per thread of a bounded grid), each reused across the
thread's grid-stride loop, never one per element.

The noise kernels step those states in registers (:func:`xoro_step`, the recurrence of
``numba.cuda.random.xoroshiro128p_next``) and store them back once, at the end.
``xoroshiro128p_next`` itself loads and stores the 16-byte state in global memory on every
draw: two draws per normal made that 64 bytes of cache traffic per 8 bytes of data moved, the
limiter of a kernel that should run at memory bandwidth. Each 64-bit output also yields two
24-bit uniforms (its high bits; xoroshiro128+'s weak bits are the lowest), hence two normals
per Box-Muller step. Imported lazily.
"""

from __future__ import annotations

import math

from numba import cuda, float32, float64, int32, int64, uint32, uint64

_U24 = float32(1.0 / (1 << 24))
_TWO_PI = float32(2.0 * math.pi)


@cuda.jit(device=True)
def xoro_step(s0, s1):
    """One xoroshiro128+ step on a state held in registers: (output, s0, s1)."""
    r = uint64(s0 + s1)
    s1 = uint64(s1 ^ s0)
    s0 = uint64(uint64((s0 << uint32(55)) | (s0 >> uint32(9))) ^ s1 ^ uint64(s1 << uint32(14)))
    s1 = uint64((s1 << uint32(36)) | (s1 >> uint32(28)))
    return r, s0, s1


@cuda.jit(device=True)
def two_uniforms(r):
    """Two uniforms in [0, 1) with 24-bit resolution from bits 40-63 and 16-39 of ``r``."""
    hi = float32(int32(r >> uint32(40))) * _U24
    lo = float32(int32((r >> uint32(16)) & uint64(0xFFFFFF))) * _U24
    return hi, lo


@cuda.jit(device=True)
def two_normals(r):
    """Two independent standard normals (Box-Muller) from one xoroshiro128+ output."""
    hi, lo = two_uniforms(r)
    rad = math.sqrt(float32(-2.0) * math.log(float32(1.0) - hi))  # 1 - hi is in (0, 1]: no log(0)
    a = _TWO_PI * lo
    return rad * math.cos(a), rad * math.sin(a)


@cuda.jit(device=True)
def next_normal(s0, s1, spare, have):
    """A thread's next standard normal: the spare one of its last Box-Muller pair if it has
    one, else a fresh pair. Returns (z, s0, s1, spare, have)."""
    if have:
        return spare, s0, s1, spare, False
    r, s0, s1 = xoro_step(s0, s1)
    z, spare = two_normals(r)
    return z, s0, s1, spare, True


@cuda.jit(device=True)
def next_uniform(s0, s1, spare, have):
    """Like :func:`next_normal`, for uniforms in [0, 1)."""
    if have:
        return spare, s0, s1, spare, False
    r, s0, s1 = xoro_step(s0, s1)
    u, spare = two_uniforms(r)
    return u, s0, s1, spare, True


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


@cuda.jit(fastmath=True)
def gaussian_kernel(x, out, apply, mean, std, states):
    """x, out: (N, M) views. One state per thread, in registers for its grid-stride loop."""
    n, m = x.shape
    total = n * m
    tid = cuda.grid(1)
    s0 = states[tid]["s0"]
    s1 = states[tid]["s1"]
    spare = float32(0.0)
    have = False
    e = tid
    while e < total:
        s = e // m
        k = e - s * m
        v = x[s, k]
        if apply[s]:
            z, s0, s1, spare, have = next_normal(s0, s1, spare, have)
            v += mean + std * z
        out[s, k] = v
        e += cuda.gridsize(1)
    states[tid]["s0"] = s0
    states[tid]["s1"] = s1


@cuda.jit
def salt_pepper_kernel(x, out, apply, amount, salt, pepper, states):
    n, m = x.shape
    total = n * m
    tid = cuda.grid(1)
    s0 = states[tid]["s0"]
    s1 = states[tid]["s1"]
    half = amount / float32(2.0)
    spare = float32(0.0)
    have = False
    e = tid
    while e < total:
        s = e // m
        k = e - s * m
        v = x[s, k]
        if apply[s]:
            u, s0, s1, spare, have = next_uniform(s0, s1, spare, have)
            if u < half:
                v = pepper
            elif u < amount:
                v = salt
        out[s, k] = v
        e += cuda.gridsize(1)
    states[tid]["s0"] = s0
    states[tid]["s1"] = s1


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


REDUCE_THREADS = 128  # block size of the kernels that reduce with block_sum


@cuda.jit(device=True)
def block_sum(partial, acc):
    """The sum of every thread's ``acc`` over a block of REDUCE_THREADS threads: a float64
    tree in the shared array ``partial``. Every thread gets the total."""
    tx = cuda.threadIdx.x
    partial[tx] = acc
    cuda.syncthreads()
    step = REDUCE_THREADS // 2
    while step > 0:
        if tx < step:
            partial[tx] += partial[tx + step]
        cuda.syncthreads()
        step //= 2
    total = partial[0]
    cuda.syncthreads()  # partial[] is free for the caller's next reduction
    return total


@cuda.jit
def jitter_kernel(x, out, bright, contrast):
    """x, out: (N, M) views; one block per sample (grid-stride over samples), a shared
    float64 tree reduction for the sample mean."""
    n, m = x.shape
    partial = cuda.shared.array(REDUCE_THREADS, dtype=float64)
    tx = cuda.threadIdx.x
    s = cuda.blockIdx.x
    while s < n:
        acc = 0.0
        k = tx
        while k < m:
            acc += x[s, k]
            k += REDUCE_THREADS
        mu = block_sum(partial, acc) / max(m, 1)
        c = float64(contrast[s])
        b = float64(bright[s])
        k = tx
        while k < m:
            out[s, k] = float32((x[s, k] - mu) * c + mu + b)
            k += REDUCE_THREADS
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
    """Population std of each column in float64, two passes (mean, then centred squares):
    one block per column (grid-stride over columns), its threads striding over the rows."""
    n, d = x.shape
    partial = cuda.shared.array(REDUCE_THREADS, dtype=float64)
    tx = cuda.threadIdx.x
    j = cuda.blockIdx.x
    while j < d:
        acc = 0.0
        i = tx
        while i < n:
            acc += x[i, j]
            i += REDUCE_THREADS
        mu = block_sum(partial, acc) / max(n, 1)
        acc = 0.0
        i = tx
        while i < n:
            t = x[i, j] - mu
            acc += t * t
            i += REDUCE_THREADS
        var = block_sum(partial, acc) / max(n, 1)
        if tx == 0:
            std[j] = math.sqrt(var)
        j += cuda.gridDim.x


@cuda.jit(fastmath=True)
def tabular_noise_kernel(x, out, apply, std, scale, states):
    n, d = x.shape
    total = n * d
    tid = cuda.grid(1)
    s0 = states[tid]["s0"]
    s1 = states[tid]["s1"]
    spare = float32(0.0)
    have = False
    e = tid
    while e < total:
        i = e // d
        j = e - i * d
        v = x[i, j]
        if apply[i]:
            z, s0, s1, spare, have = next_normal(s0, s1, spare, have)
            v += scale * std[j] * z
        out[i, j] = v
        e += cuda.gridsize(1)
    states[tid]["s0"] = s0
    states[tid]["s1"] = s1


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
