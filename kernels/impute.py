"""Missing-value imputation with the semantics of ``sklearn.impute.SimpleImputer``.

``Imputer(strategy=..., fill_value=None, keep_empty_features=False, add_indicator=False)``
fits on an in-memory array or streams over a shard directory, optionally across MPI ranks,
and fills NaNs on the CPU (numpy) or on a CUDA device (numba device arrays, torch CUDA
tensors) without a host round trip.

Exactness when distributed (every rank holds part of the rows):

- mean / constant: per-column float64 sums and counts, merged by one allreduce. For a shard
  directory they come straight from the manifest's column statistics (no data read).
- median: a radix selection on the float32 bit patterns: four rounds, each an 8-bit
  histogram per column over the local data and one allreduce of ``d x 2 x 256`` int64, pin
  down the two middle order statistics exactly. The first round's histogram is built in the
  pass that counts the values. Cost: 4 passes over the data and 4 small allreduces,
  whatever the number of rows.
- most_frequent: per-column value counts (sorted distinct values and counts) gathered to
  every rank and merged. Cost: memory and traffic proportional to the number of distinct
  values; right for discrete/categorical columns, heavy for continuous ones.

An in-memory fit without a communicator uses, for the median, a sampled bracket and two
streaming passes (see ``_impute_cpu.col_median_sampled``) and, for
most_frequent, a sort per column of a compacted feature-major copy; both paths are exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from hpctrain.data.impute_io import STATS_NAME  # noqa: F401 - public name, kept importable here
from hpctrain.errors import ImputeError  # noqa: F401 - public name, kept importable here
from hpctrain.kernels._arrays import as_float32

STRATEGIES = ("mean", "median", "most_frequent", "constant")
FORMAT = "hpctrain-imputer"
FORMAT_VERSION = 1


# --- collectives (hpctrain.comm.collective; ``comm`` may be None, a Collective or an mpi4py communicator) ---


def merge_statistics(partial: dict, comm=None) -> dict:
    """Merge the mergeable per-rank partials (``sum``, ``count``, ``rows``) with one
    allreduce each; the single-process call returns them unchanged. Every rank must call it."""
    from hpctrain.comm.world import as_collective

    c = as_collective(comm)
    return {"sum": c.allreduce(np.asarray(partial["sum"], dtype=np.float64)),
            "count": c.allreduce(np.asarray(partial["count"], dtype=np.int64)),
            "rows": int(c.allreduce(np.array([partial["rows"]], dtype=np.int64))[0])}


# --- input handling -----------------------------------------------------------------------


def as_2d_float32(x: Any, what: str = "X") -> np.ndarray:
    """A C-contiguous (rows x features) float32 view or copy of ``x`` (numpy or CPU torch)."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        if getattr(x, "is_cuda", False):
            raise ImputeError(f"{what} is a CUDA tensor; use transform() (which runs on the device) "
                              "or move it to the CPU first")
        x = x.detach().numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ImputeError(f"{what} cannot be read as a numeric array ({e})") from None
    if a.dtype.kind not in "fiub":
        raise ImputeError(f"{what} has dtype {a.dtype}; expected a numeric array (NaN marks a missing value)")
    if a.ndim < 2:
        raise ImputeError(f"{what} has shape {a.shape}; expected (rows, features) or (rows, *sample_shape); "
                          "reshape a single sample with x[None, :] or a single feature with x[:, None]")
    a = a.reshape(a.shape[0], math.prod(a.shape[1:]))  # not -1: that fails for zero rows
    out, overflow = as_float32(a)
    if overflow:
        raise ImputeError(f"{what} has {a.dtype} values beyond the float32 range (|x| > 3.4e38), which the float32 "
                          "output cannot hold: rescale the data first")
    return out


def is_device_array(x: Any) -> bool:
    """A CUDA array (``__cuda_array_interface__``; torch CPU tensors do not expose it) or a
    numba device array (including the simulator's), told apart without importing numba.cuda."""
    return hasattr(x, "__cuda_array_interface__") or type(x).__module__.startswith("numba.cuda")


def _check_finite_sums(sums: np.ndarray, count: np.ndarray, where: str) -> None:
    bad = np.flatnonzero(~np.isfinite(sums) & (count > 0))
    if bad.size:
        raise ImputeError(f"{where}: column(s) {bad[:5].tolist()} hold infinite values; only NaN marks a missing "
                          "value (scikit-learn rejects inf too): replace inf with NaN or a finite value first")


# --- statistics ---------------------------------------------------------------------------


def _chunks_sum_count(chunks: Callable[[], Iterable[np.ndarray]], d: int) -> tuple[np.ndarray, np.ndarray, int]:
    from hpctrain.kernels import _impute_cpu as K

    sums = np.zeros(d)
    count = np.zeros(d, dtype=np.int64)
    rows = 0
    for x in chunks():
        s, c = K.col_sum_count(x)
        sums += s
        count += c
        rows += x.shape[0]
    return sums, count, rows


def radix_select(chunks: Callable[[], Iterable[np.ndarray]], ranks: np.ndarray, comm=None,
                 first: np.ndarray | None = None) -> np.ndarray:
    """Exact order statistics: ``out[j, t]`` is the ``ranks[j, t]``-th smallest (0-based)
    non-NaN value of column j over all chunks on all ranks. Ranks out of range give NaN.

    The selection is :func:`hpctrain.kernels.order_stats.radix_select`; this rank's
    histograms come from a numba pass over the float32 data per round. ``chunks()`` must
    yield the same local data on every call (it is read four times, or three when
    ``first``, this rank's (d, 256) histogram of the top 8 key bits, is given:
    ``_impute_cpu.sum_count_top`` makes it in the pass that counts the values)."""
    from hpctrain.kernels import _impute_cpu as K
    from hpctrain.kernels.order_stats import keys_to_float, radix_select as select

    d = np.shape(ranks)[0]

    def hist(shift: int, prefix: np.ndarray) -> np.ndarray:
        if shift == 24 and first is not None:
            return first[:, None, :]  # the first round has no prefix: one histogram per column
        out = np.zeros((d, prefix.shape[1], 256), dtype=np.int64)
        for x in chunks():
            out += K.radix_hist(x.view(np.uint32), shift, prefix)
        return out

    keys, valid = select(hist, ranks, 32, comm)
    out = keys_to_float(keys, np.float32).astype(np.float64)
    out[~valid] = np.nan
    return out


def _value_counts(chunks: Callable[[], Iterable[np.ndarray]], d: int, comm=None) -> list[tuple[np.ndarray, np.ndarray]]:
    from hpctrain.kernels import _impute_cpu as K

    acc: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(d)]
    for x in chunks():
        _, count = K.col_sum_count(x)
        buf, off = K.compact_columns(x, count)
        vals, cnts, sizes = K.col_value_counts(buf, off)
        for j in range(d):
            acc[j].append((vals[sizes[j]:sizes[j + 1]], cnts[sizes[j]:sizes[j + 1]]))
    local = [_merge_counts(parts) for parts in acc]
    if comm.size == 1:
        return local
    gathered = comm.allgather(local)
    return [_merge_counts([g[j] for g in gathered]) for j in range(d)]


def _merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    v = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    u, inv = np.unique(v, return_inverse=True)
    return u, np.bincount(inv, weights=c, minlength=len(u)).astype(np.int64)


def _mode_of_counts(vals: np.ndarray, cnts: np.ndarray) -> float:
    if len(vals) == 0:
        return math.nan
    return float(vals[int(np.argmax(cnts))])  # argmax takes the first maximum: the smallest value


@dataclasses.dataclass(kw_only=True, slots=True)
class FitResult:
    statistics: np.ndarray  # float64, NaN where the column had no observed value
    count: np.ndarray  # non-NaN values per column
    rows: int


def fit_statistics(chunks: Callable[[], Iterable[np.ndarray]], n_features: int, strategy: str,
                   fill_value: float = 0.0, comm=None, *, sum_count: tuple[np.ndarray, np.ndarray, int] | None = None,
                   in_memory: np.ndarray | None = None) -> FitResult:
    """Per-column statistics of the data ``chunks()`` yields (2-D float32 arrays), merged
    over ``comm``'s ranks when given. Every rank must call it (it runs collectives)."""
    from hpctrain.comm.world import as_collective
    from hpctrain.kernels import _impute_cpu as K

    comm = as_collective(comm)
    d = int(n_features)
    first = None
    if sum_count is None and strategy == "median" and not (in_memory is not None and comm.size == 1):
        # the streaming median: the counting pass also makes the first radix round's histogram,
        # which saves one read of the data (shards are re-read on every pass)
        sums, count, rows, first = np.zeros(d), np.zeros(d, dtype=np.int64), 0, np.zeros((d, 256), dtype=np.int64)
        for x in chunks():
            s_, c_, h_ = K.sum_count_top(x)
            sums += s_
            count += c_
            first += h_
            rows += x.shape[0]
        sum_count = (sums, count, rows)
    elif sum_count is None:
        sum_count = _chunks_sum_count(chunks, d)
    merged = merge_statistics({"sum": sum_count[0], "count": sum_count[1], "rows": sum_count[2]}, comm)
    sums, count, rows = merged["sum"], merged["count"], merged["rows"]
    _check_finite_sums(sums, count, "X")
    empty = count == 0
    if strategy == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            stats = sums / np.maximum(count, 1)
    elif strategy == "constant":
        stats = np.full(d, float(fill_value))
    elif strategy == "median":
        if in_memory is not None and comm.size == 1:
            stats = K.col_median_sampled(in_memory, count)
        else:
            ranks = np.stack([(count - 1) // 2, count // 2], axis=1)
            ranks[empty] = -1
            sel = radix_select(chunks, ranks, comm, first=first)
            stats = (sel[:, 0] + sel[:, 1]) / 2.0 + 0.0  # a zero median is +0.0, as in scikit-learn
    elif strategy == "most_frequent":
        if in_memory is not None and comm.size == 1:
            buf, off = K.compact_columns(in_memory, count)
            stats = K.col_mode(buf, off)
        else:
            stats = np.array([_mode_of_counts(v, c) for v, c in _value_counts(chunks, d, comm)], dtype=np.float64)
    else:
        raise ImputeError(f"strategy {strategy!r} is not one of {list(STRATEGIES)}")
    stats = np.asarray(stats, dtype=np.float64)
    stats[empty] = np.nan
    return FitResult(statistics=stats, count=np.asarray(count, dtype=np.int64), rows=int(rows))


# --- the imputer --------------------------------------------------------------------------


def _flag(v: Any, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ImputeError(f"{name} is {v!r} ({type(v).__name__}); expected True or False")
    return bool(v)


class Imputer:
    """sklearn-compatible imputer; see the module docstring for the distributed methods.

    After fit: ``statistics_`` (float64, one per input feature; NaN for a feature with no
    observed value, which transform drops unless ``keep_empty_features``),
    ``n_features_in_`` and ``indicator_features_`` (the features that had a missing value
    at fit; with ``add_indicator`` each gets a 0/1 column appended to the output).
    """

    def __init__(self, strategy: str = "mean", fill_value: float | None = None, keep_empty_features: bool = False,
                 add_indicator: bool = False) -> None:
        if strategy not in STRATEGIES:
            raise ImputeError(f"imputation strategy {strategy!r} is not one of {list(STRATEGIES)}")
        if fill_value is not None and (isinstance(fill_value, bool) or not isinstance(fill_value, (int, float))
                                       or not math.isfinite(fill_value)):
            raise ImputeError(f"fill_value {fill_value!r} must be a finite number (or None for 0)")
        self.strategy = strategy
        self.fill_value = fill_value
        # bool("no") is True: a string or number here would silently switch the option on
        self.keep_empty_features = _flag(keep_empty_features, "keep_empty_features")
        self.add_indicator = _flag(add_indicator, "add_indicator")
        self.statistics_: np.ndarray | None = None
        self.n_features_in_: int | None = None
        self.indicator_features_: np.ndarray | None = None
        self.source: dict = {}
        self._plan: tuple | None = None
        self._device_cache: dict = {}

    def __repr__(self) -> str:
        return (f"Imputer(strategy={self.strategy!r}, fill_value={self.fill_value!r}, "
                f"keep_empty_features={self.keep_empty_features}, add_indicator={self.add_indicator})")

    # -- fitting
    def fit(self, data: Any, *, comm=None, split: str | None = "train", from_manifest: bool = True) -> Imputer:
        """Fit on an array (this rank's rows) or a shard directory / Manifest (the ranks of
        ``comm`` share its shards round-robin). With ``from_manifest``, mean and constant
        use the manifest's column statistics and read no data."""
        from hpctrain.data.impute_io import is_shard_input

        if is_shard_input(data):
            return self._fit_shards(data, comm=comm, split=split, from_manifest=from_manifest)
        x = as_2d_float32(data)
        if x.shape[0] == 0:
            raise ImputeError(f"X has shape {np.shape(data)}: no rows to fit on; fit needs at least one sample "
                              "(scikit-learn refuses too)")
        if x.shape[1] == 0:
            raise ImputeError(f"X has shape {np.shape(data)}: no features to fit on; fit needs at least one "
                              "feature per sample (scikit-learn refuses too)")
        res = fit_statistics(lambda: [x], x.shape[1], self.strategy, self._fill(), comm, in_memory=x)
        self._set(res, source={"kind": "array", "rows": res.rows})
        return self

    def _fit_shards(self, where: Any, *, comm, split: str | None, from_manifest: bool) -> Imputer:
        from hpctrain.comm.world import as_collective
        from hpctrain.data.impute_io import shard_fit_input

        c = as_collective(comm)
        inp = shard_fit_input(where, split=split, rank=c.rank, size=c.size,
                              from_manifest=from_manifest and self.strategy in ("mean", "constant"))
        if inp.sum_count is not None:
            res = fit_statistics(lambda: [], inp.n_features, self.strategy, self._fill(), None,
                                 sum_count=inp.sum_count)
            self._set(res, source={**inp.source, "from": "manifest"})
            return self
        res = fit_statistics(inp.chunks, inp.n_features, self.strategy, self._fill(), c)
        self._set(res, source={**inp.source, "from": "data"})
        return self

    def _fill(self) -> float:
        return 0.0 if self.fill_value is None else float(self.fill_value)

    def _set(self, res: FitResult, *, source: dict) -> None:
        stats = res.statistics.copy()
        empty = res.count == 0
        if self.keep_empty_features:
            # sklearn: an empty feature is kept and filled with 0 (fill_value for 'constant')
            stats[empty] = self._fill() if self.strategy == "constant" else 0.0
        self.statistics_ = stats
        self.n_features_in_ = int(len(stats))
        self.indicator_features_ = np.flatnonzero(res.count < res.rows).astype(np.int64)
        self.source = source
        self._plan = None
        self._device_cache = {}

    # -- transforming
    def _check_fitted(self) -> None:
        if self.statistics_ is None:
            raise ImputeError("this Imputer is not fitted; call fit(X or shard dir) or Imputer.load(path) first")

    def plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(kept feature indices, their float32 fill values, indicator features, identity?)"""
        self._check_fitted()
        if self._plan is None:
            keep = np.flatnonzero(~np.isnan(self.statistics_)).astype(np.int64)
            ind = self.indicator_features_ if self.add_indicator else np.empty(0, dtype=np.int64)
            values = self.statistics_[keep].astype(np.float32)
            identity = len(keep) == self.n_features_in_ and len(ind) == 0
            self._plan = (keep, values, ind, identity)
        return self._plan

    @property
    def n_features_out(self) -> int:
        keep, _, ind, _ = self.plan()
        return len(keep) + len(ind)

    def transform(self, X: Any, *, copy: bool = False) -> Any:
        """Fill the NaNs of ``X``. numpy/CPU torch: float32 output, filled in place when
        ``X`` is C-contiguous, writeable float32, no feature is dropped and no indicator is
        added (and ``copy`` is False); otherwise a filled copy is returned and ``X`` is left
        as it was. CUDA arrays/tensors are handled on the device."""
        self._check_fitted()
        copy = _flag(copy, "copy")
        if is_device_array(X):
            from hpctrain.kernels import _cuda_impute

            return _cuda_impute.transform(self, X, copy=copy)
        from hpctrain.kernels import _impute_cpu as K

        is_torch = hasattr(X, "detach") and hasattr(X, "numpy")
        x = as_2d_float32(X)
        in_shape = tuple(X.shape) if is_torch or isinstance(X, np.ndarray) else np.shape(X)  # lists have no .shape
        if x.shape[1] != self.n_features_in_:
            raise ImputeError(f"X has {x.shape[1]} features per sample; this imputer was fitted on "
                              f"{self.n_features_in_}: use the statistics of the same dataset")
        keep, values, ind, identity = self.plan()
        if identity:
            shared = np.shares_memory(x, X.detach().numpy() if is_torch else np.asarray(X))
            # a read-only X (np.ndarray with write=False, a memory-mapped file opened 'r') cannot be
            # filled in place: the filled copy is returned instead
            if (copy or not x.flags.writeable) and shared:
                out = np.empty_like(x)
                K.fill_copy(x, out, values)
            else:
                K.fill_inplace(x, values)
                if shared and (is_torch or isinstance(X, np.ndarray)):
                    return X  # filled in place
                out = x
            out = out.reshape(in_shape)
        else:
            out = np.empty((x.shape[0], len(keep) + len(ind)), dtype=np.float32)
            K.fill_select(x, out, keep, values, ind)
        if is_torch:
            import torch

            return torch.from_numpy(out)
        return out

    def fit_transform(self, X: Any, *, comm=None) -> Any:
        return self.fit(X, comm=comm).transform(X, copy=True)

    # -- persistence
    def to_json(self) -> dict:
        self._check_fitted()
        return {"format": FORMAT, "version": FORMAT_VERSION, "strategy": self.strategy,
                "fill_value": self.fill_value, "keep_empty_features": self.keep_empty_features,
                "add_indicator": self.add_indicator, "n_features": self.n_features_in_,
                "statistics": [None if math.isnan(v) else float(v) for v in self.statistics_.tolist()],
                "indicator_features": [int(v) for v in self.indicator_features_], "source": self.source}

    def save(self, path: str | os.PathLike, comm=None) -> Path:
        """Write the statistics as JSON (atomically; only rank 0 of ``comm`` writes).
        ``path`` may be a shard directory: the file goes next to its manifest."""
        from hpctrain.comm.world import as_collective
        from hpctrain.data.impute_io import write_stats

        return write_stats(path, self.to_json(), rank=as_collective(comm).rank)

    @classmethod
    def from_json(cls, d: Any, where: str = "imputer statistics") -> Imputer:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ImputeError(f"{where} is not an hpctrain imputer file (format {FORMAT!r} missing); "
                              "write one with 'hpctrain impute fit DIR'")
        if type(d.get("version")) is not int or d["version"] > FORMAT_VERSION:
            raise ImputeError(f"{where} has version {d.get('version')!r}; this hpctrain reads up to "
                              f"{FORMAT_VERSION}: upgrade hpctrain or re-run 'hpctrain impute fit'")
        try:
            imp = cls(strategy=d["strategy"], fill_value=d.get("fill_value"),
                      keep_empty_features=bool(d["keep_empty_features"]), add_indicator=bool(d["add_indicator"]))
            stats = np.array([np.nan if v is None else float(v) for v in d["statistics"]], dtype=np.float64)
            ind = np.array([int(v) for v in d["indicator_features"]], dtype=np.int64)
            n = int(d["n_features"])
        except (KeyError, TypeError, ValueError) as e:
            raise ImputeError(f"{where} is malformed ({type(e).__name__}: {e}); re-run 'hpctrain impute fit'") from None
        if np.any(np.isinf(stats)):
            raise ImputeError(f"{where} holds infinite statistics; the file is corrupt: re-run 'hpctrain impute fit'")
        if len(stats) != n or (len(ind) and (ind.min() < 0 or ind.max() >= n)):
            raise ImputeError(f"{where}: {len(stats)} statistics for {n} features (or an indicator index out of "
                              "range); the file is corrupt: re-run 'hpctrain impute fit'")
        imp.statistics_ = stats
        imp.n_features_in_ = n
        imp.indicator_features_ = ind
        src = d.get("source")
        imp.source = dict(src) if isinstance(src, dict) else {}  # informative only: a bad one is dropped
        return imp

    @classmethod
    def load(cls, path: str | os.PathLike) -> Imputer:
        """Read statistics written by :meth:`save` (a file, or a shard directory holding one)."""
        from hpctrain.data.impute_io import read_stats

        d, where = read_stats(path)
        return cls.from_json(d, where=where)
