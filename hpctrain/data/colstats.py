"""Mergeable per-column statistics of a shard (kept in the manifest)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from hpctrain.data.format import (
    STATS_KEYS,
    ShardError,
    _check_keys,
)


def _enc(a: np.ndarray) -> list:
    # JSON has no inf/nan; encode them as strings that float() reads back.
    return [float(v) if math.isfinite(v) else str(float(v)) for v in a.tolist()]


def _dec(v: Sequence, n: int, what: str) -> np.ndarray:
    try:
        out = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        raise ShardError(f"column stats field {what!r} holds non-numbers") from None
    if out.shape != (n,):
        raise ShardError(f"column stats field {what!r} has {out.size} values, expected {n}")
    return out


@dataclass(kw_only=True, slots=True)
class ColumnStats:
    """Mergeable per-column statistics (float64 arrays, one value per flattened feature).

    Choice for non-finite values: ``count``, ``sum``, ``sumsq``, ``min`` and ``max`` are over
    the *finite* values only; NaNs are counted in ``nan_count`` and +/-inf in ``inf_count``.
    So ``mean() = sum / count`` is the mean of the finite values, and the missing share of
    a column is ``nan_count / total``. A column with no finite value has min=+inf, max=-inf
    (the identity of merge) and mean/std NaN.
    """

    count: np.ndarray
    nan_count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray
    inf_count: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.inf_count is None:
            self.inf_count = np.zeros_like(np.asarray(self.count, dtype=np.float64))
        for name in ("count", "nan_count", "sum", "sumsq", "min", "max", "inf_count"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))

    @property
    def n_columns(self) -> int:
        return int(self.count.shape[0])

    @property
    def total(self) -> np.ndarray:
        """Values seen per column: finite + NaN + inf."""
        return self.count + self.nan_count + self.inf_count

    @classmethod
    def empty(cls, n_columns: int) -> ColumnStats:
        z = np.zeros(n_columns, dtype=np.float64)
        return cls(count=z.copy(), nan_count=z.copy(), sum=z.copy(), sumsq=z.copy(),
                   min=np.full(n_columns, np.inf), max=np.full(n_columns, -np.inf), inf_count=z.copy())

    @classmethod
    def from_array(cls, x: np.ndarray) -> ColumnStats:
        """Statistics of ``x`` (N x ...); columns are the flattened trailing dimensions."""
        x2 = np.asarray(x).reshape(len(x), -1) if np.ndim(x) != 2 else np.asarray(x)
        n_cols = x2.shape[1]
        if len(x2) == 0:
            return cls.empty(n_cols)
        nan = np.isnan(x2)
        fin = np.isfinite(x2)
        v = np.where(fin, x2, 0).astype(np.float64)
        count = fin.sum(axis=0).astype(np.float64)
        nan_count = nan.sum(axis=0).astype(np.float64)
        return cls(
            count=count, nan_count=nan_count, inf_count=len(x2) - count - nan_count,
            sum=v.sum(axis=0), sumsq=np.einsum("ij,ij->j", v, v),
            min=np.where(fin, x2, np.inf).min(axis=0).astype(np.float64),
            max=np.where(fin, x2, -np.inf).max(axis=0).astype(np.float64),
        )

    def merge(self, other: ColumnStats) -> ColumnStats:
        if other.n_columns != self.n_columns:
            raise ShardError(f"cannot merge column stats of {self.n_columns} and {other.n_columns} columns; "
                             "the shards have different schemas")
        return ColumnStats(count=self.count + other.count, nan_count=self.nan_count + other.nan_count,
                           inf_count=self.inf_count + other.inf_count, sum=self.sum + other.sum,
                           sumsq=self.sumsq + other.sumsq, min=np.minimum(self.min, other.min),
                           max=np.maximum(self.max, other.max))

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)

    def var(self) -> np.ndarray:
        """Population variance of the finite values (ddof=0)."""
        m = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            v = self.sumsq / np.maximum(self.count, 1) - m * m
        return np.where(self.count > 0, np.maximum(v, 0.0), np.nan)

    def std(self) -> np.ndarray:
        return np.sqrt(self.var())

    def missing_share(self) -> np.ndarray:
        t = self.total
        return np.where(t > 0, self.nan_count / np.maximum(t, 1), 0.0)

    def to_json(self) -> dict:
        return {k: _enc(getattr(self, k)) for k in ("count", "nan_count", "inf_count", "sum", "sumsq", "min", "max")}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ColumnStats:
        if not isinstance(d, Mapping) or "count" not in d:
            raise ShardError(f"column stats must be a mapping with count/nan_count/sum/sumsq/min/max, got {d!r:.80}")
        _check_keys(d, STATS_KEYS, "column stats")
        n = len(d["count"])
        missing = [k for k in ("nan_count", "sum", "sumsq", "min", "max") if k not in d]
        if missing:
            raise ShardError(f"column stats lack {missing}")
        kw = {k: _dec(d[k], n, k) for k in ("count", "nan_count", "sum", "sumsq", "min", "max")}
        kw["inf_count"] = _dec(d["inf_count"], n, "inf_count") if "inf_count" in d else np.zeros(n)
        return cls(**kw)
