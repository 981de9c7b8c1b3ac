"""CPU (numba ``njit(parallel=True)``) kernels for imputation.

All kernels take C-contiguous 2-D float32 arrays (rows x features). Row-major data is read
row by row: each thread owns a block of rows and keeps per-feature partials for it, so the
traversal is sequential in memory; a column-at-a-time loop would stride through every
cache line once per feature.

``cache=True`` stores the compiled code next to this file, so a new process (a training
rank, the CLI) skips most of the compile time after the first run.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

_SIGN = np.uint64(0x80000000)
_LOW31 = np.uint64(0x7FFFFFFF)
_BYTE = np.uint64(255)
_MASK32 = np.uint64(0xFFFFFFFF)
_INF_BITS = np.uint64(0x7F800000)
_SPARE = np.uint64(256)


def blocks(n: int) -> int:
    """Row blocks per kernel call: a few per thread balances the load. Computed here, not
    inside the kernels, because reading the thread count from compiled code blocks caching."""
    return max(1, min(int(n), 4 * numba.get_num_threads()))


@njit(parallel=True, cache=True)
def _col_sum_count(x, nb):
    """Per-feature float64 sum and int64 count of the non-NaN values."""
    n, d = x.shape
    sums = np.zeros((nb, d), dtype=np.float64)
    counts = np.zeros((nb, d), dtype=np.int64)
    for b in prange(nb):
        lo = b * n // nb
        hi = (b + 1) * n // nb
        s = np.zeros(d, dtype=np.float64)
        c = np.zeros(d, dtype=np.int64)
        for i in range(lo, hi):
            for j in range(d):
                v = x[i, j]
                ok = v == v
                s[j] += np.float64(v) if ok else 0.0
                c[j] += 1 if ok else 0
        sums[b, :] = s
        counts[b, :] = c
    return sums.sum(axis=0), counts.sum(axis=0)


@njit(parallel=True, cache=True)
def _fill_copy(x, out, values, nb):
    """out = x with each NaN of column j replaced by ``values[j]`` (one pass, no prior copy).
    ``out`` may be ``x``: each element is read before it is written, at the same index. The
    store is unconditional on purpose: a branch-free loop vectorises."""
    n, d = x.shape
    for b in prange(nb):
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):
                v = x[i, j]
                out[i, j] = values[j] if v != v else v


@njit(parallel=True, cache=True)
def _fill_select(x, out, keep, values, indicator, nb):
    """out[:, :len(keep)] = x[:, keep] with NaNs filled; then one 0/1 column per
    ``indicator`` feature saying whether it was missing."""
    n = x.shape[0]
    nk = keep.shape[0]
    ni = indicator.shape[0]
    for b in prange(nb):
        for i in range(b * n // nb, (b + 1) * n // nb):
            for k in range(nk):
                v = x[i, keep[k]]
                out[i, k] = values[k] if v != v else v
            for m in range(ni):
                v = x[i, indicator[m]]
                out[i, nk + m] = np.float32(1.0) if v != v else np.float32(0.0)


@njit(parallel=True, cache=True)
def _compact_columns(x, counts, nb):
    """The non-NaN values of each column, column after column (feature-major), plus the
    offsets of each column's run. ``counts`` are the per-column non-NaN counts."""
    n, d = x.shape
    # per-block counts give every (block, column) its own write window: no atomics needed
    bc = np.zeros((nb, d), dtype=np.int64)
    for b in prange(nb):
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):
                v = x[i, j]
                bc[b, j] += 1 if v == v else 0
    offsets = np.zeros(d + 1, dtype=np.int64)
    for j in range(d):
        offsets[j + 1] = offsets[j] + counts[j]
    start = np.empty((nb, d), dtype=np.int64)
    for j in range(d):
        pos = offsets[j]
        for b in range(nb):
            start[b, j] = pos
            pos += bc[b, j]
    buf = np.empty(offsets[d] + 1, dtype=np.float32)  # +1: a NaN's write lands in the slack slot at the end
    for b in prange(nb):
        w = start[b, :].copy()
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):
                v = x[i, j]
                ok = v == v
                # branch-free: always store, advance only for a value (missing share is unpredictable)
                buf[w[j] if ok else offsets[d]] = v
                w[j] += 1 if ok else 0
    return buf[:offsets[d]], offsets


@njit(cache=True)
def select_inplace(a, k):
    """Rearrange ``a`` so a[k] is its k-th smallest value, a[:k] <= a[k] <= a[k+1:]
    (Hoare partitioning, median-of-three pivots; a sort finishes a range that shrinks
    too slowly, which bounds the worst case)."""
    lo = 0
    hi = a.shape[0] - 1
    rounds = 0
    while hi > lo:
        rounds += 1
        if rounds > 64:
            a[lo:hi + 1] = np.sort(a[lo:hi + 1])
            break
        mid = (lo + hi) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


@njit(cache=True)
def _value_counts_1d(col):
    s = np.sort(col)
    m = s.shape[0]
    vals = np.empty(m, dtype=np.float32)
    cnts = np.empty(m, dtype=np.int64)
    u = 0
    i = 0
    while i < m:
        j = i + 1
        while j < m and s[j] == s[i]:
            j += 1
        vals[u] = s[i]
        cnts[u] = j - i
        u += 1
        i = j
    return vals[:u], cnts[:u]


@njit(parallel=True, cache=True)
def col_mode(buf, offsets):
    """Exact per-column most frequent value; ties go to the smallest value."""
    d = offsets.shape[0] - 1
    out = np.full(d, np.nan)
    for j in prange(d):
        if offsets[j + 1] == offsets[j]:
            continue
        vals, cnts = _value_counts_1d(buf[offsets[j]:offsets[j + 1]])
        best = 0
        for u in range(1, vals.shape[0]):
            if cnts[u] > cnts[best]:  # strict: the first (smallest) of equal counts wins
                best = u
        out[j] = vals[best]
    return out


@njit(parallel=True, cache=True)
def col_value_counts(buf, offsets):
    """Sorted distinct values and their counts per column, concatenated, with offsets."""
    d = offsets.shape[0] - 1
    sizes = np.zeros(d + 1, dtype=np.int64)
    parts_v = [np.empty(0, dtype=np.float32) for _ in range(d)]
    parts_c = [np.empty(0, dtype=np.int64) for _ in range(d)]
    for j in prange(d):
        v, c = _value_counts_1d(buf[offsets[j]:offsets[j + 1]])
        parts_v[j] = v
        parts_c[j] = c
    for j in range(d):
        sizes[j + 1] = sizes[j] + parts_v[j].shape[0]
    vals = np.empty(sizes[d], dtype=np.float32)
    cnts = np.empty(sizes[d], dtype=np.int64)
    for j in range(d):
        vals[sizes[j]:sizes[j + 1]] = parts_v[j]
        cnts[sizes[j]:sizes[j + 1]] = parts_c[j]
    return vals, cnts, sizes


@njit(inline="always", cache=True)
def _key(b):
    """float32 bits (as uint64) -> a key whose unsigned order is the float order."""
    return b ^ _MASK32 if b & _SIGN else b | _SIGN


@njit(parallel=True, cache=True)
def _radix_hist(xbits, shift, prefix, nb):
    """Histogram of the 8-bit digit at ``shift`` of the keys of each column's non-NaN
    values whose higher digits equal ``prefix[j, t]``'s; shape (d, T, 256).

    ``xbits`` is the float32 data viewed as uint32 (NaN: exponent all ones, mantissa non-zero).
    Branch-free: a NaN or a value outside the prefix is counted in a spare bin 256 that is
    dropped at the end (a branch on the missing share mispredicts and costs more)."""
    n, d = xbits.shape
    t_count = prefix.shape[1]
    sh = np.uint64(shift)
    hs = np.uint64(shift + 8)
    high = np.empty((d, t_count), dtype=np.uint64)
    for j in range(d):
        for t in range(t_count):
            high[j, t] = prefix[j, t] >> hs
    hist = np.zeros((nb, d, t_count, 257), dtype=np.int64)
    for b in prange(nb):
        h = hist[b]
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):
                bits = np.uint64(xbits[i, j])
                ok = (bits & _LOW31) <= _INF_BITS
                k = _key(bits)
                digit = (k >> sh) & _BYTE
                top = k >> hs
                for t in range(t_count):
                    h[j, t, digit if ok & (top == high[j, t]) else _SPARE] += 1
    return hist[:, :, :, :256].sum(axis=0)


@njit(parallel=True, cache=True)
def _sum_count_top(x, xbits, nb):
    """One pass: per-feature float64 sum and count of the non-NaN values, and the histogram
    of the top 8 key bits (the first radix round, which has no prefix yet); shape (d, 256)."""
    n, d = x.shape
    sums = np.zeros((nb, d), dtype=np.float64)
    counts = np.zeros((nb, d), dtype=np.int64)
    hist = np.zeros((nb, d, 257), dtype=np.int64)
    for b in prange(nb):
        s = np.zeros(d, dtype=np.float64)
        c = np.zeros(d, dtype=np.int64)
        h = hist[b]
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):
                v = x[i, j]
                ok = v == v
                s[j] += np.float64(v) if ok else 0.0
                c[j] += 1 if ok else 0
                h[j, (_key(np.uint64(xbits[i, j])) >> np.uint64(24)) if ok else _SPARE] += 1
        sums[b, :] = s
        counts[b, :] = c
    return sums.sum(axis=0), counts.sum(axis=0), hist[:, :, :256].sum(axis=0)


def sum_count_top(x):
    return _sum_count_top(x, x.view(np.uint32), blocks(x.shape[0]))


def col_sum_count(x):
    return _col_sum_count(x, blocks(x.shape[0]))


def fill_inplace(x, values):
    return _fill_copy(x, x, values, blocks(x.shape[0]))


def fill_select(x, out, keep, values, indicator):
    return _fill_select(x, out, keep, values, indicator, blocks(x.shape[0]))


def compact_columns(x, counts):
    return _compact_columns(x, counts, blocks(x.shape[0]))


def radix_hist(xbits, shift, prefix):
    return _radix_hist(xbits, shift, prefix, blocks(xbits.shape[0]))



# --- median: one transposing pass, then a histogram selection per column -----------------
# Each block of rows writes its non-NaN values of column j, compacted, into its own row range
# of a feature-major buffer (no counting pass, no atomics). Per column, a 65536-bin histogram
# of the top 16 bits of the order-preserving keys locates the bins of the two middle order
# statistics; only the values of those bins are gathered and selected exactly. That replaces
# a full quickselect over the column by two streaming passes and a tiny selection.


@njit(parallel=True, cache=True)
def _transpose_compact(xbits, nb):
    n, d = xbits.shape
    buf = np.empty((d, n), dtype=np.uint32)
    seg = np.zeros((nb, d), dtype=np.int64)
    for b in prange(nb):
        lo = b * n // nb
        w = np.zeros(d, dtype=np.int64)
        for i in range(lo, (b + 1) * n // nb):
            for j in range(d):
                bits = xbits[i, j]
                ok = (np.uint64(bits) & _LOW31) <= _INF_BITS
                buf[j, lo + w[j]] = bits  # a NaN is overwritten by the next value, or left past the count
                w[j] += 1 if ok else 0
        seg[b, :] = w
    return buf, seg


@njit(parallel=True, cache=True)
def _median_from_segments(buf, seg, nb):
    d, n = buf.shape
    out = np.full(d, np.nan)
    for j in prange(d):
        m = 0
        for b in range(nb):
            m += seg[b, j]
        if m == 0:
            continue
        k_lo = (m - 1) // 2
        k_hi = m // 2
        hist = np.zeros(65536, dtype=np.int32)  # 256 KiB: stays in L2
        for b in range(nb):
            lo = b * n // nb
            for t in range(lo, lo + seg[b, j]):
                hist[_key(np.uint64(buf[j, t])) >> np.uint64(16)] += 1
        acc = 0
        bin_lo = -1
        bin_hi = -1
        below = 0
        for v in range(65536):
            if bin_lo < 0 and acc + hist[v] > k_lo:
                bin_lo = v
                below = acc
            if acc + hist[v] > k_hi:
                bin_hi = v
                break
            acc += hist[v]
        size = 0
        for v in range(bin_lo, bin_hi + 1):
            size += hist[v]
        cand = np.empty(size, dtype=np.float32)
        cbits = cand.view(np.uint32)
        c = 0
        ulo = np.uint64(bin_lo)
        uhi = np.uint64(bin_hi)
        for b in range(nb):
            lo = b * n // nb
            for t in range(lo, lo + seg[b, j]):
                kb = _key(np.uint64(buf[j, t])) >> np.uint64(16)
                if kb >= ulo and kb <= uhi:
                    cbits[c] = buf[j, t]
                    c += 1
        r_hi = k_hi - below
        hi = np.float64(select_inplace(cand, r_hi))
        if k_lo == k_hi:
            out[j] = hi + 0.0  # + 0.0: a zero median is +0.0, as scikit-learn gives (-0.0 + 0.0 == +0.0)
        else:
            out[j] = (np.float64(cand[:r_hi].max()) + hi) / 2.0 + 0.0
    return out


def col_median_fast(x: np.ndarray) -> np.ndarray:
    """Exact per-column median of row-major float32 ``x`` (NaN = missing; NaN for an empty column)."""
    nb = blocks(x.shape[0])
    buf, seg = _transpose_compact(x.view(np.uint32), nb)
    return _median_from_segments(buf, seg, nb)


def fill_copy(x, out, values):
    return _fill_copy(x, out, values, blocks(x.shape[0]))


# --- median, faster: a sampled bracket, two streaming row-major passes --------------------
# A random sample of rows gives, per column, two pivots lo <= hi that bracket both middle
# order statistics with overwhelming probability. Pass 1 (vectorised over the features of a
# row) counts, per row block and column, the values below lo, equal to lo, strictly between
# and equal to hi; pass 2 copies only the values strictly between (a few percent) into
# per-(block, column) windows sized by pass 1, so no atomics and no transposed copy of the
# data. A selection in each column's small window finishes the job. The pivots only decide
# the speed: a column whose middle ranks fall outside its bracket (a bad sample) is redone
# with the full method, so the result is exact whatever the sample.


@njit(parallel=True, cache=True)
def _bracket_counts(x, lo, hi, nb):
    n, d = x.shape
    cnt = np.zeros((nb, 4, d), dtype=np.int64)
    for b in prange(nb):
        lt = np.zeros(d, dtype=np.int64)
        el = np.zeros(d, dtype=np.int64)
        md = np.zeros(d, dtype=np.int64)
        eh = np.zeros(d, dtype=np.int64)
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):  # branch-free so that the loop over j vectorises
                v = x[i, j]
                a = lo[j]
                c = hi[j]
                lt[j] += 1 if v < a else 0
                el[j] += 1 if v == a else 0
                md[j] += 1 if (v > a) & (v < c) else 0
                eh[j] += 1 if v == c else 0
        cnt[b, 0, :] = lt
        cnt[b, 1, :] = el
        cnt[b, 2, :] = md
        cnt[b, 3, :] = eh
    return cnt


@njit(parallel=True, cache=True)
def _bracket_gather(x, lo, hi, start, total, nb):
    n, d = x.shape
    buf = np.empty(total + 1, dtype=np.float32)
    for b in prange(nb):
        w = start[b, :].copy()
        for i in range(b * n // nb, (b + 1) * n // nb):
            for j in range(d):
                v = x[i, j]
                ok = (v > lo[j]) & (v < hi[j])
                # branch-free: always store (an outsider lands in the slack slot at the end); a
                # branch on this mispredicts enough to make the pass 5x slower
                buf[w[j] if ok else total] = v
                w[j] += 1 if ok else 0
    return buf[:total]


@njit(parallel=True, cache=True)
def _bracket_resolve(buf, off, lo, hi, tot, k_lo, k_hi):
    """Per column the two middle order statistics, from the bracket counts ``tot`` (4, d);
    ``ok[j]`` False where a rank fell outside the bracket."""
    d = lo.shape[0]
    out = np.full(d, np.nan)
    ok = np.ones(d, dtype=np.bool_)
    for j in prange(d):
        if k_lo[j] < 0:
            continue
        lt = tot[0, j]
        el = tot[1, j]
        md = tot[2, j]
        eh = tot[3, j] if hi[j] != lo[j] else 0  # lo == hi: the "equal" values were counted twice
        pair = np.empty(2, dtype=np.float64)
        for q in range(2):
            k = k_lo[j] if q == 0 else k_hi[j]
            if k < lt or k >= lt + el + md + eh:
                ok[j] = False
            elif k < lt + el:
                pair[q] = lo[j]
            elif k < lt + el + md:
                pair[q] = select_inplace(buf[off[j]:off[j + 1]], k - lt - el)
            else:
                pair[q] = hi[j]
        if ok[j]:
            # + 0.0: a zero median is +0.0, as scikit-learn gives (-0.0 + 0.0 == +0.0)
            out[j] = (pair[1] if k_lo[j] == k_hi[j] else (pair[0] + pair[1]) / 2.0) + 0.0
    return out, ok


def col_median_sampled(x: np.ndarray, count: np.ndarray, *, sample: int = 32768, margin: float = 2.0,
                       seed: int = 0) -> np.ndarray:
    """Exact per-column median of row-major float32 ``x`` whose per-column non-NaN counts are
    ``count`` (NaN for an empty column). ``sample`` rows pick the pivots; ``margin`` (in
    units of sqrt(sampled values)) widens the bracket. Both only change the speed."""
    n, d = x.shape
    count = np.asarray(count, dtype=np.int64)
    k_lo = np.where(count > 0, (count - 1) // 2, -1)
    k_hi = np.where(count > 0, count // 2, -1)
    lo = np.full(d, -np.inf, dtype=np.float32)
    hi = np.full(d, np.inf, dtype=np.float32)
    if n > 0 and sample > 0:
        # at most ~4 M sampled values, so wide samples (images) do not copy much
        size = min(int(sample), n, max(256, (1 << 22) // max(d, 1)))
        rows = np.sort(np.random.default_rng(seed).integers(0, n, size=size))
        s = np.sort(x[rows], axis=0)  # NaN sorts last
        ms = (s == s).sum(axis=0)
        for j in np.flatnonzero((ms > 0) & (count > 0)):
            scale = ms[j] / count[j]
            w = margin * math.sqrt(ms[j]) + 1.0
            r_lo = math.floor(k_lo[j] * scale - w)
            r_hi = math.ceil(k_hi[j] * scale + w)
            if r_lo >= 0:
                lo[j] = s[r_lo, j]
            if r_hi < ms[j]:
                hi[j] = s[r_hi, j]
    nb = blocks(n)
    cnt = _bracket_counts(x, lo, hi, nb)
    mid = cnt[:, 2, :]
    col_total = mid.sum(axis=0)
    off = np.zeros(d + 1, dtype=np.int64)
    np.cumsum(col_total, out=off[1:])
    # block b of column j writes at off[j] + (mid of column j in blocks before b)
    start = off[:d][None, :] + np.cumsum(mid, axis=0) - mid
    buf = _bracket_gather(x, lo, hi, np.ascontiguousarray(start), int(off[d]), nb)
    out, ok = _bracket_resolve(buf, off, lo, hi, cnt.sum(axis=0), k_lo, k_hi)
    bad = np.flatnonzero(~ok)
    if bad.size:
        out[bad] = col_median_fast(np.ascontiguousarray(x[:, bad]))
    return out
