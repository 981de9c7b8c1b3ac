"""Exact order statistics over the ranks of a job: one radix selection for every caller.

The k-th smallest value of a column, when its values are spread over ranks, is found one
8-bit digit of its order-preserving key at a time: each round every rank histograms the
digit of its keys that still match the prefix found so far, one allreduce merges the
histograms, and the running counts pick the digit. float32 data takes 4 rounds, float64
8, whatever the number of rows or ranks. Quality statistics (quantiles, MAD over sorted
columns) and the imputer's median (a streaming pass over shards per round) both use
:func:`radix_select`; they differ only in how a rank makes its local histogram.

It replaced a bisection over the key range (32 or 64 allreduce rounds, one count per
round), which scripts/bench_quantile.py measures side by side (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# hist_fn(shift, prefix) -> this rank's (d, T, 256) int64 histogram of the 8-bit digit at
# ``shift`` of the keys of column j whose higher bits equal prefix[j, t]; T = prefix.shape[1]
HistFn = Callable[[int, np.ndarray], np.ndarray]


def float_keys(a: np.ndarray) -> np.ndarray:
    """Order-preserving unsigned integer keys (uint64) of float32/float64 values (NaN-free input)."""
    if a.dtype == np.float32:
        bits, top = a.view(np.uint32).astype(np.uint64), np.uint64(1 << 31)
        mask = np.uint64(0xFFFFFFFF)
    elif a.dtype == np.float64:
        bits, top = a.view(np.uint64), np.uint64(1 << 63)
        mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    else:
        raise TypeError(f"float_keys: float32 or float64 expected, got {a.dtype}")
    neg = (bits & top) != 0
    return np.where(neg, (~bits) & mask, bits | top)


def keys_to_float(k: np.ndarray, dtype) -> np.ndarray:
    """Inverse of :func:`float_keys`."""
    k = np.asarray(k, dtype=np.uint64)
    if np.dtype(dtype) == np.float32:
        top, mask = np.uint64(1 << 31), np.uint64(0xFFFFFFFF)
        bits = np.where(k & top, k & ~top & mask, (~k) & mask)
        return bits.astype(np.uint32).view(np.float32)
    top, mask = np.uint64(1 << 63), np.uint64(0xFFFFFFFFFFFFFFFF)
    bits = np.where(k & top, k & ~top & mask, (~k) & mask)
    return bits.view(np.float64)


def radix_select(hist_fn: HistFn, ranks: np.ndarray, nbits: int, comm=None) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the ``ranks[j, t]``-th smallest (0-based) key of column j over all ranks of
    ``comm``: returns (keys uint64 (d, T), valid (d, T)); a rank out of range is not valid.

    Every rank must call it with the same ``ranks`` (it runs ``nbits / 8`` allreduces)."""
    from hpctrain.comm.world import as_collective

    c = as_collective(comm)
    ranks = np.asarray(ranks, dtype=np.int64)
    d, t = ranks.shape
    want = ranks.copy()
    prefix = np.zeros((d, t), dtype=np.uint64)
    valid = want >= 0
    for shift in range(nbits - 8, -1, -8):
        # the targets of a column usually share their leading digits (always in the first
        # round): then one histogram per column serves them all
        same = bool(np.all(prefix == prefix[:, :1]))
        hist = np.asarray(hist_fn(shift, np.ascontiguousarray(prefix[:, :1]) if same else prefix), dtype=np.int64)
        hist = c.allreduce(hist)  # ``same`` agrees on every rank: the prefixes come from merged counts
        if same:
            hist = np.broadcast_to(hist, (d, t, 256))
        cum = np.cumsum(hist, axis=2)
        digit = (cum <= want[:, :, None]).sum(axis=2)  # first bin whose running count exceeds the rank
        valid &= digit < 256
        digit = np.minimum(digit, 255)
        below = np.where(digit > 0, np.take_along_axis(cum, np.maximum(digit - 1, 0)[:, :, None], 2)[:, :, 0], 0)
        want -= below
        prefix |= digit.astype(np.uint64) << np.uint64(shift)
    return prefix, valid


def sorted_keys_hist(sorted_keys: list[np.ndarray], nbits: int) -> HistFn:
    """The local histogram of :func:`radix_select` for columns whose keys are sorted: each
    bin count is a difference of two binary searches, so no pass over the data is made."""
    digits = np.arange(256, dtype=np.uint64)

    def hist(shift: int, prefix: np.ndarray) -> np.ndarray:
        d, t = prefix.shape
        out = np.zeros((d, t, 256), dtype=np.int64)
        edges = np.empty((t, 257), dtype=np.uint64)
        top = shift + 8 >= nbits  # the block above a prefix would end at 2**nbits: past every key
        for j, keys in enumerate(sorted_keys):
            if not keys.size:
                continue
            p = prefix[j][:, None]
            edges[:, :256] = p + (digits << np.uint64(shift))
            edges[:, 256] = p[:, 0] + np.uint64(0 if top else 1 << (shift + 8))
            pos = np.searchsorted(keys, edges.ravel(), side="left").reshape(t, 257)
            if top:
                pos[:, 256] = keys.size
            out[j] = np.diff(pos, axis=1)
        return out

    return hist


def order_statistics(sorted_keys: list[np.ndarray], targets: list[np.ndarray], nbits: int, comm) -> list[np.ndarray]:
    """For each column c, the keys of the global ``targets[c]``-th smallest values (0-based)
    over all ranks, where ``sorted_keys[c]`` holds this rank's keys of column c, sorted.
    Every rank must call this with the same ``targets``."""
    sizes = [len(t) for t in targets]
    width = max(sizes, default=0)
    if width == 0:
        return [np.zeros(0, dtype=np.uint64) for _ in targets]
    ranks = np.full((len(targets), width), -1, dtype=np.int64)
    for c, t in enumerate(targets):
        if len(t):
            # pad with the column's last target rather than -1, so its prefixes stay shared
            ranks[c, :len(t)] = t
            ranks[c, len(t):] = t[-1]
    keys, _ = radix_select(sorted_keys_hist(sorted_keys, nbits), ranks, nbits, comm)
    return [keys[c, :n] for c, n in enumerate(sizes)]
