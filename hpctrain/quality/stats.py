"""Mergeable per-column statistics over array chunks, and exact distributed quantiles.

Conventions (used by every quality command):
- a chunk is a 2-D float array, rows x columns (image samples are flattened);
- NaN is *missing*; +inf/-inf are counted in ``inf_count`` and excluded from every other
  statistic (moments, quantiles, histograms, outliers), so one stray inf cannot turn a
  mean or a quantile into inf/NaN;
- moments are merged with Chan's parallel update (count, mean, M2), which stays accurate
  where sum/sum-of-squares cancels catastrophically.

Exact quantiles: each rank keeps its own finite values per column, sorted. The k-th
smallest value over all ranks is found by radix selection over the order-preserving integer
keys of the floats, one 8-bit digit per round (:mod:`hpctrain.kernels.order_stats`):
4 (float32) or 8 (float64) allreduces of a columns x order-statistics x 256 histogram.
The answer is an actual data value, so the result is exact and identical for any number
of ranks; memory is the rank's own data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hpctrain.kernels.order_stats import float_keys, keys_to_float, order_statistics
from hpctrain.quality import QualityError


def as_2d(x: np.ndarray, what: str = "array") -> np.ndarray:
    """``x`` as a 2-D float array (rows x flattened features); non-numeric input is rejected."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise QualityError(f"{what}: dtype {x.dtype} is not numeric; quality commands need numeric "
                           "columns (encode categorical/text columns as numbers when sharding)")
    if x.ndim == 0:
        raise QualityError(f"{what}: got a scalar, expected rows x features")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return x


@dataclass(kw_only=True, slots=True)
class Moments:
    """Per-column count/mean/M2/min/max over finite values, plus NaN and inf counts."""

    rows: int
    count: np.ndarray
    nan_count: np.ndarray
    inf_count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, ncols: int) -> Moments:
        z = np.zeros(ncols, dtype=np.int64)
        return cls(rows=0, count=z.copy(), nan_count=z.copy(), inf_count=z.copy(),
                   mean=np.zeros(ncols), m2=np.zeros(ncols),
                   min=np.full(ncols, np.inf), max=np.full(ncols, -np.inf))

    @classmethod
    def from_chunk(cls, x: np.ndarray) -> Moments:
        x = as_2d(x)
        nan = np.isnan(x)
        inf = np.isinf(x)
        fin = ~(nan | inf)
        cnt = fin.sum(axis=0).astype(np.int64)
        xf = np.where(fin, x, 0.0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnt > 0, xf.sum(axis=0) / np.maximum(cnt, 1), 0.0)
        dev = np.where(fin, x - mean, 0.0)
        m2 = (dev.astype(np.float64) ** 2).sum(axis=0)
        mn = np.where(fin, x, np.inf).min(axis=0, initial=np.inf).astype(np.float64)
        mx = np.where(fin, x, -np.inf).max(axis=0, initial=-np.inf).astype(np.float64)
        return cls(rows=x.shape[0], count=cnt, nan_count=nan.sum(axis=0).astype(np.int64),
                   inf_count=inf.sum(axis=0).astype(np.int64), mean=mean, m2=m2, min=mn, max=mx)

    def merge(self, o: Moments) -> Moments:
        n = self.count + o.count
        delta = o.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(n > 0, o.count / np.maximum(n, 1), 0.0)
            mean = self.mean + delta * w
            m2 = self.m2 + o.m2 + np.where(n > 0, delta**2 * self.count * o.count / np.maximum(n, 1), 0.0)
        return Moments(rows=self.rows + o.rows, count=n, nan_count=self.nan_count + o.nan_count,
                       inf_count=self.inf_count + o.inf_count, mean=mean, m2=m2,
                       min=np.minimum(self.min, o.min), max=np.maximum(self.max, o.max))

    def std(self, ddof: int = 1) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > ddof, np.sqrt(self.m2 / np.maximum(self.count - ddof, 1)), np.nan)

    def missing_pct(self) -> np.ndarray:
        return 100.0 * self.nan_count / max(self.rows, 1)


@dataclass(kw_only=True, slots=True)
class CoMoments:
    """Mean vector and co-moment matrix over *complete* rows (every column finite),
    mergeable like ``Moments``; gives the listwise-complete correlation matrix."""

    n: int
    mean: np.ndarray
    c: np.ndarray

    @classmethod
    def from_chunk(cls, x: np.ndarray) -> CoMoments:
        x = as_2d(x).astype(np.float64)
        x = x[np.isfinite(x).all(axis=1)]
        ncol = x.shape[1]
        if x.shape[0] == 0:
            return cls(n=0, mean=np.zeros(ncol), c=np.zeros((ncol, ncol)))
        mean = x.mean(axis=0)
        d = x - mean
        return cls(n=x.shape[0], mean=mean, c=d.T @ d)

    def merge(self, o: CoMoments) -> CoMoments:
        n = self.n + o.n
        if n == 0:
            return CoMoments(n=0, mean=self.mean.copy(), c=self.c.copy())
        delta = o.mean - self.mean
        mean = self.mean + delta * (o.n / n)
        c = self.c + o.c + np.outer(delta, delta) * (self.n * o.n / n)
        return CoMoments(n=n, mean=mean, c=c)

    def corr(self) -> np.ndarray:
        d = np.sqrt(np.diag(self.c))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.c / np.outer(d, d)
        return np.clip(r, -1.0, 1.0)


def merge_all(states: Sequence):
    """Merge states left to right (a fixed order keeps the result bit-identical across rank counts)."""
    it = iter(states)
    acc = next(it)
    for s in it:
        acc = acc.merge(s)
    return acc


# ---- row hashes (duplicates) ----------------------------------------------------------

_MUL = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: every input bit affects every output bit
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_hashes(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash per row of (features as float32, label). -0.0 equals 0.0 and every NaN
    equals every NaN, as a person reading the data would judge. Two distinct rows collide with
    probability about 2**-64, so among N rows expect N**2 / 2**65 false duplicates."""
    x = as_2d(x, "features").astype(np.float32)
    x = x + np.float32(0.0)  # -0.0 -> 0.0
    x = np.where(np.isnan(x), np.float32(np.nan), x)  # one canonical NaN bit pattern
    w = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(x.shape[0], np.uint64(x.shape[1]), dtype=np.uint64)
        for j in range(w.shape[1]):
            h = _mix(h * _MUL + w[:, j] + np.uint64(j))
        if y is not None:
            h = _mix(h * _MUL + np.asarray(y).astype(np.int64).view(np.uint64))
    return h


def first_occurrence_mask(hashes: np.ndarray) -> np.ndarray:
    """True for the first row of each distinct hash, in the given order."""
    _, first = np.unique(hashes, return_index=True)
    keep = np.zeros(hashes.shape[0], dtype=bool)
    keep[first] = True
    return keep


# ---- exact quantiles (the selection itself: hpctrain.kernels.order_stats) ----------------


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    # numpy's own formula for the "linear" method, so results match np.quantile bit for bit
    diff = b - a
    out = a + diff * t
    return np.where(t >= 0.5, b - diff * (1 - t), out)


def _sorted_keys(v: np.ndarray) -> np.ndarray:
    # a float sort leaves -0.0 and 0.0 interleaved (they compare equal); their keys differ
    k = float_keys(v)
    return k if k.size < 2 or bool(np.all(k[1:] >= k[:-1])) else np.sort(k)


def exact_quantiles(local_sorted: list[np.ndarray], counts: np.ndarray, qs: Sequence[float], comm) -> np.ndarray:
    """Quantiles (numpy's default linear method) per column, exact, over all ranks.

    ``local_sorted[c]``: this rank's finite values of column c, sorted, float32 or float64;
    ``counts[c]``: the global number of finite values of column c. Returns (columns x len(qs));
    NaN for a column without finite values."""
    qs = np.asarray(qs, dtype=np.float64)
    dtype = local_sorted[0].dtype if local_sorted else np.float64
    nbits = 32 if dtype == np.float32 else 64
    targets, plans = [], []
    for c in range(len(local_sorted)):
        n = int(counts[c])
        if n == 0:
            targets.append(np.zeros(0, dtype=np.int64))
            plans.append(None)
            continue
        h = (n - 1) * qs
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        uniq, inv = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        targets.append(uniq)
        plans.append((inv[: len(qs)], inv[len(qs):], h - lo))
    keys = order_statistics([_sorted_keys(v) for v in local_sorted], targets, nbits, comm)
    out = np.full((len(local_sorted), len(qs)), np.nan)
    for c, plan in enumerate(plans):
        if plan is None:
            continue
        vals = keys_to_float(keys[c], dtype).astype(np.float64)
        i_lo, i_hi, g = plan
        out[c] = _lerp(vals[i_lo], vals[i_hi], g)
    return out


def exact_mad(local_sorted: list[np.ndarray], counts: np.ndarray, medians: np.ndarray, comm) -> np.ndarray:
    """Median absolute deviation from ``medians`` per column, exact over all ranks."""
    dev = [np.sort(np.abs(v.astype(np.float64) - medians[c])) if np.isfinite(medians[c])
           else np.zeros(0) for c, v in enumerate(local_sorted)]
    return exact_quantiles(dev, counts, [0.5], comm)[:, 0]


def local_sorted_columns(x: np.ndarray) -> list[np.ndarray]:
    """This rank's finite values per column, sorted (the input of ``exact_quantiles``)."""
    x = as_2d(x)
    return [np.sort(col[np.isfinite(col)]) for col in x.T]


def histograms(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Per-column counts of finite values in ``bins`` equal bins over [lo, hi] (global range),
    with np.histogram's edges, so counts from chunks add up to the whole-data histogram."""
    x = as_2d(x)
    out = np.zeros((x.shape[1], bins), dtype=np.int64)
    for c in range(x.shape[1]):
        if not (np.isfinite(lo[c]) and np.isfinite(hi[c])):
            continue
        col = x[:, c]
        out[c] = np.histogram(col[np.isfinite(col)], bins=bins, range=(lo[c], hi[c]))[0]
    return out


def hist_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    return np.histogram_bin_edges(np.zeros(0), bins=bins, range=(lo, hi))


def class_counts(y: np.ndarray) -> dict[int, int]:
    vals, cnt = np.unique(np.asarray(y).astype(np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, cnt)}


def imbalance_ratio(counts: dict[int, int]) -> float:
    """Largest over smallest class count, over the classes present (inf if one class is absent
    from a declared class list is handled by the caller)."""
    present = [c for c in counts.values() if c > 0]
    if len(present) < 2:
        return 1.0
    return max(present) / min(present)
