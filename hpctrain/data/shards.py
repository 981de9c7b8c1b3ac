"""HDF5 shards: the on-disk format, the manifest, the writer and whole-shard readers.

A shard directory holds ``<split>-NNNNN.h5`` files and a ``manifest.json`` written last,
atomically. A directory without a manifest is, by definition, not a shard directory: a
crash while writing leaves no manifest, and readers refuse it.

Each shard file holds ``x`` (float32, N x sample_shape) and ``y`` (int64, N), chunked in
about 1 MiB row blocks (the loader reads whole chunks), with fletcher32 on every chunk.

Column statistics (see :class:`ColumnStats`) are mergeable, so profiling and imputation can
work from the manifest alone without touching the data.

h5py is imported inside functions so ``import hpctrain.data`` stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from hpctrain.errors import HpctrainError
from hpctrain.fileio import atomic_path, atomic_write_json, sha256_file

FORMAT = "hpctrain-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Files other commands keep beside the manifest (hpctrain impute fit writes imputer.json).
DERIVED_NAMES = frozenset({"imputer.json"})
SPLITS = ("train", "val")
CHUNK_BYTES = 1 << 20
# Default shard size ceiling: big enough that per-file overhead is negligible, small enough
# that one shard (the writer's memory bound) fits comfortably in RAM.
DEFAULT_SHARD_BYTES = 32 << 20
_SHARD_NAME = re.compile(r"^(train|val)-\d{5,}\.h5$")
# The keys of format version 1. A format that adds keys bumps FORMAT_VERSION (which older
# hpctrain refuses with "upgrade hpctrain"), so within version 1 an unknown key is a hand edit
# or a typo and is refused rather than ignored: ignoring "shard" for "shards" hides a mistake.
MANIFEST_KEYS = ("format", "version", "schema", "meta", "shards")
SCHEMA_KEYS = ("dtype", "sample_shape", "feature_names", "classes", "class_names", "targets")
SHARD_KEYS = ("file", "rows", "sha256", "split", "class_counts", "stats")
STATS_KEYS = ("count", "nan_count", "inf_count", "sum", "sumsq", "min", "max")
COMPRESSIONS = ("none", "lzf", "gzip")


class ShardError(HpctrainError):
    """A shard directory, manifest, shard file or shard input is wrong or corrupt."""


def _is_int(v: Any) -> bool:
    # JSON true/false load as bool, a subclass of int; a count of True is a broken manifest
    return isinstance(v, int) and not isinstance(v, bool)


def _check_keys(d: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """Refuse keys of ``d`` outside ``known``, naming the first one and the closest known key."""
    for k in d:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ShardError(f"{where}: unknown key {k!r}{hint}; format version {FORMAT_VERSION} has only "
                             f"{', '.join(known)}: remove or rename the key, or re-create the shard directory")


def _bad_field(where: str, name: str, value: Any, expected: str) -> ShardError:
    return ShardError(f"{where}: {name} is {type(value).__name__} {value!r:.60}; expected {expected}. The manifest "
                      "was edited or is corrupt: fix the field or re-create the shard directory")


# --- HDF5 file locking ----------------------------------------------------------------------

LOCKING_ENV = "HDF5_USE_FILE_LOCKING"


def default_file_locking() -> None:
    """Turn HDF5 file locking off for this process unless the user chose a setting.

    Lustre, GPFS and NFS often reject the ``flock``/``fcntl`` locks HDF5 >= 1.10 takes on
    open, and readers never need them. HDF5 reads the variable once, when its file layer
    first initialises, so this runs before any ``h5py.File`` call in hpctrain. An explicit
    ``HDF5_USE_FILE_LOCKING`` in the environment (TRUE, FALSE or BEST_EFFORT) wins.
    """
    os.environ.setdefault(LOCKING_ENV, "FALSE")


def h5_open(path: str | os.PathLike, mode: str = "r", *, locking: bool | None = None, **h5_kwargs: Any):
    """Open an HDF5 file with hpctrain's locking default, mapping failures to ShardError.

    ``locking=None`` follows the environment (default off, see :func:`default_file_locking`);
    True/False ask HDF5 for that per file (the environment variable still overrides it).
    """
    if not locking:
        default_file_locking()
    import h5py

    kwargs: dict[str, Any] = dict(h5_kwargs)
    if locking is not None:
        kwargs["locking"] = locking
    elif os.environ.get(LOCKING_ENV, "").upper() in ("FALSE", "0"):
        kwargs["locking"] = False
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise ShardError(f"shard file {str(path)!r} does not exist; re-create the shard directory "
                         "with 'hpctrain shard' or fix the manifest") from None
    except OSError as e:
        if re.search(r"\block", str(e), re.IGNORECASE):  # not "sblock" (superblock) in a truncation error
            raise ShardError(f"shard file {str(path)!r}: HDF5 could not lock it ({e}); another process holds it "
                             f"open for writing, or the file system rejects locks: unset {LOCKING_ENV} or set it "
                             "to FALSE (hpctrain's default) for read-only access") from e
        raise ShardError(f"shard file {str(path)!r} cannot be opened as HDF5 ({e}); it is truncated or "
                         "corrupt: re-create it with 'hpctrain shard' (check with 'hpctrain shard verify')"
                         ) from e


# --- column statistics ------------------------------------------------------------------------


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


# --- manifest ---------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Schema:
    dtype: str = field(default="float32", metadata={"help": "element dtype of x (always float32)"})
    sample_shape: tuple[int, ...] = field(metadata={"help": "shape of one sample, e.g. (64,) or (1, 8, 8)"})
    feature_names: list[str] = field(metadata={"help": "one name per flattened feature"})
    classes: list[int] = field(default_factory=list, metadata={"help": "sorted label values seen"})
    class_names: list[str] | None = field(default=None,
                                          metadata={"help": "names of the classes when the labels were strings"})
    targets: int = field(default=0, metadata={
        "help": "regression: float targets per row (y float32 of shape (N,) for 1, (N, k) for k); "
                "0: classification (y int64 class ids)"})

    @property
    def regression(self) -> bool:
        return self.targets > 0

    @property
    def y_shape(self) -> tuple[int, ...]:
        """The shape of one row's label: () for class ids and one target, (k,) for k targets."""
        return (self.targets,) if self.targets > 1 else ()

    @property
    def y_dtype(self):
        return np.float32 if self.regression else np.int64

    @property
    def n_features(self) -> int:
        return int(np.prod(self.sample_shape)) if self.sample_shape else 1

    def to_json(self) -> dict:
        d = {"dtype": self.dtype, "sample_shape": list(self.sample_shape), "feature_names": list(self.feature_names),
             "classes": [int(c) for c in self.classes]}
        if self.class_names is not None:
            d["class_names"] = list(self.class_names)
        if self.targets:
            d["targets"] = int(self.targets)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Schema:
        where = "manifest schema"
        missing = [k for k in ("dtype", "sample_shape", "feature_names", "classes") if k not in d]
        if missing:
            raise ShardError(f"{where} lacks {missing}; expected dtype, sample_shape, feature_names and classes")
        _check_keys(d, SCHEMA_KEYS, where)
        # Strict types, no coercion: int("8") or str(3) would let a damaged manifest through.
        if not isinstance(d["dtype"], str):
            raise _bad_field(where, "dtype", d["dtype"], "a string ('float32')")
        shape = d["sample_shape"]
        if not isinstance(shape, list) or not all(_is_int(v) and v >= 1 for v in shape):
            raise _bad_field(where, "sample_shape", shape, "a list of positive integers, e.g. [64] or [1, 8, 8]")
        names = d["feature_names"]
        if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
            raise _bad_field(where, "feature_names", names, "a list of strings")
        classes = d["classes"]
        if not isinstance(classes, list) or not all(_is_int(v) for v in classes):
            raise _bad_field(where, "classes", classes, "a list of integer class ids")
        if len(set(classes)) != len(classes):
            raise _bad_field(where, "classes", classes, "each class id once")
        cn = d.get("class_names")
        if cn is not None and (not isinstance(cn, list) or not all(isinstance(v, str) for v in cn)):
            raise _bad_field(where, "class_names", cn, "a list of strings (or absent)")
        targets = d.get("targets", 0)
        if not _is_int(targets) or targets < 0 or (targets and classes):
            raise _bad_field(where, "targets", targets, "a non-negative integer, and no classes when positive")
        s = cls(dtype=d["dtype"], sample_shape=tuple(shape), feature_names=list(names), classes=list(classes),
                class_names=list(cn) if cn is not None else None, targets=targets)
        if s.dtype != "float32":
            raise ShardError(f"manifest schema dtype is {s.dtype!r}; this hpctrain reads only 'float32'")
        if len(s.feature_names) != s.n_features:
            raise ShardError(f"manifest schema has {len(s.feature_names)} feature names for sample shape "
                             f"{s.sample_shape} ({s.n_features} features)")
        return s


@dataclass(kw_only=True, slots=True)
class ShardInfo:
    file: str
    rows: int
    sha256: str
    split: str
    class_counts: dict[int, int]
    stats: ColumnStats

    def to_json(self) -> dict:
        return {"file": self.file, "rows": self.rows, "sha256": self.sha256, "split": self.split,
                "class_counts": {str(k): int(v) for k, v in sorted(self.class_counts.items())},
                "stats": self.stats.to_json()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], n_features: int, regression: bool = False) -> ShardInfo:
        if not isinstance(d, Mapping):
            raise ShardError(f"manifest shard entry {d!r:.80} is not a mapping; expected file, rows, sha256, split, "
                             "class_counts and stats")
        missing = [k for k in SHARD_KEYS if k not in d]
        if missing:
            raise ShardError(f"manifest shard entry {str(d)[:120]!r} lacks {missing}; expected file, rows, sha256, "
                             "split, class_counts and stats")
        where = f"manifest shard {d['file']!r:.80}"
        _check_keys(d, SHARD_KEYS, where)
        for name in ("file", "sha256", "split"):
            if not isinstance(d[name], str):
                raise _bad_field(where, name, d[name], "a string")
        if not _is_int(d["rows"]):
            raise _bad_field(where, "rows", d["rows"], "an integer (the shard's row count)")
        cc = d["class_counts"]
        if not isinstance(cc, Mapping):
            raise _bad_field(where, "class_counts", cc, 'a mapping of class id to row count, e.g. {"0": 12}')
        counts: dict[int, int] = {}
        for k, v in cc.items():
            try:
                label = int(k)  # JSON object keys are strings: "3" is class 3
            except ValueError:
                raise _bad_field(where, "a class_counts key", k, "an integer class id") from None
            if not _is_int(v) or v < 0:
                raise _bad_field(where, f"class_counts[{k!r}]", v, "a non-negative integer")
            counts[label] = v
        try:
            stats = ColumnStats.from_json(d["stats"])
        except (TypeError, ValueError) as e:
            raise ShardError(f"{where}: stats are malformed ({type(e).__name__}: {e}); expected "
                             f"{', '.join(STATS_KEYS)}, one value per feature") from None
        info = cls(file=d["file"], rows=d["rows"], sha256=d["sha256"], split=d["split"], class_counts=counts,
                   stats=stats)
        if info.split not in SPLITS:
            raise ShardError(f"manifest shard {info.file!r} has split {info.split!r}; expected one of {SPLITS}")
        if info.rows < 1:
            raise ShardError(f"manifest shard {info.file!r} has {info.rows} rows; expected at least 1")
        if sum(counts.values()) != info.rows and not (regression and not counts):  # regression: no classes
            raise ShardError(f"manifest shard {info.file!r}: class_counts add up to {sum(counts.values())} rows, "
                             f"rows is {info.rows}; the manifest was edited or is corrupt: re-create the shard "
                             "directory")
        if info.stats.n_columns != n_features:
            raise ShardError(f"manifest shard {info.file!r} has stats for {info.stats.n_columns} columns, "
                             f"the schema has {n_features} features")
        return info


def _check_meta(meta: Any, mpath: str) -> dict:
    """``meta`` is free-form provenance (source, seed, what clean/balance did), except the keys
    hpctrain reads back, whose types are checked here rather than failing later, far away."""
    if not isinstance(meta, dict):
        raise ShardError(f"{mpath!r}: meta is {type(meta).__name__} {meta!r:.60}; expected a JSON object "
                         '(e.g. {"compression": "lzf", "chunk_rows": 4096}): fix it or re-create the shard directory')
    where = f"{mpath!r} meta"
    for name in ("chunk_rows", "rows_per_shard"):
        if name in meta and not (_is_int(meta[name]) and meta[name] >= 1):
            raise _bad_field(where, name, meta[name], "a positive integer")
    if "compression" in meta and meta["compression"] not in COMPRESSIONS:
        raise _bad_field(where, "compression", meta["compression"], f"one of {', '.join(COMPRESSIONS)}")
    return dict(meta)


def _check_labels(schema: Schema, shards: Sequence[ShardInfo], mpath: str) -> None:
    """Every label a shard counts must be in schema.classes: the trainer maps labels to outputs
    by their position in that list, and an undeclared label only fails there, deep in torch."""
    declared = set(schema.classes)
    undeclared: dict[int, int] = {}
    first = None
    for s in shards:
        for k, v in s.class_counts.items():
            if v and k not in declared:
                undeclared[k] = undeclared.get(k, 0) + v
                first = first or s.file
    if undeclared:
        labels = sorted(undeclared)
        raise ShardError(f"{mpath!r}: the shards hold labels {labels[:10]}{' ...' if len(labels) > 10 else ''} "
                         f"({sum(undeclared.values())} rows, first in {first!r}) that are not in schema.classes "
                         f"{schema.classes}; the manifest is inconsistent (edited, or corrupt) and training would "
                         f"index past its {len(schema.classes)} classes. Re-create the directory with 'hpctrain shard "
                         "INPUT --out DIR --force', or list every label in schema.classes")


def _safe_relative(root: Path, name: str) -> Path:
    """``root / name`` if ``name`` is a plain relative path that stays inside root."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name in ("", "."):
        raise ShardError(f"manifest in {str(root)!r} names shard {name!r}, which is outside its directory; "
                         "shard file names must be relative paths inside the shard directory")
    return root / p


@dataclass(kw_only=True, slots=True)
class Manifest:
    version: int
    schema: Schema
    shards: list[ShardInfo]
    root: Path
    meta: dict = field(default_factory=dict, metadata={"help": "source, label, seed, val_fraction, compression..."})

    # -- queries
    def shards_for(self, split: str | None) -> list[ShardInfo]:
        if split is not None and split not in SPLITS:
            raise ShardError(f"split {split!r} is not one of {SPLITS} (or None for all)")
        return [s for s in self.shards if split is None or s.split == split]

    def rows(self, split: str | None = None) -> int:
        return sum(s.rows for s in self.shards_for(split))

    def class_counts(self, split: str | None = None) -> dict[int, int]:
        out = {int(c): 0 for c in self.schema.classes}
        for s in self.shards_for(split):
            for k, v in s.class_counts.items():
                out[k] = out.get(k, 0) + v
        return dict(sorted(out.items()))

    def column_stats(self, split: str | None = None) -> ColumnStats:
        acc = ColumnStats.empty(self.schema.n_features)
        for s in self.shards_for(split):
            acc = acc.merge(s.stats)
        return acc

    def path(self, shard: ShardInfo) -> Path:
        return _safe_relative(self.root, shard.file)

    @property
    def chunk_rows(self) -> int:
        return int(self.meta.get("chunk_rows") or chunk_rows_for(self.schema.sample_shape))

    # -- (de)serialisation
    def to_json(self) -> dict:
        return {"format": FORMAT, "version": self.version, "schema": self.schema.to_json(), "meta": self.meta,
                "shards": [s.to_json() for s in self.shards]}

    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST_NAME, self.to_json())

    @classmethod
    def load(cls, where: str | os.PathLike | Manifest, *, check_files: bool = True) -> Manifest:
        """Read ``DIR/manifest.json`` (or the manifest path itself); check its structure and,
        with ``check_files``, that every shard it names exists."""
        if isinstance(where, Manifest):
            return where
        p = Path(where)
        if p.is_dir():
            mpath = p / MANIFEST_NAME
        elif p.name == MANIFEST_NAME or p.suffix == ".json":
            mpath = p
        elif not p.exists():
            raise ShardError(f"shard directory {str(p)!r} does not exist; create it with "
                             "'hpctrain shard INPUT --out DIR'")
        else:
            raise ShardError(f"{str(p)!r} is a file, not a shard directory; pass the directory that holds "
                             f"{MANIFEST_NAME}")
        root = mpath.parent
        if not mpath.is_file():
            raise ShardError(f"{str(root)!r} has no {MANIFEST_NAME}: it is not a shard directory, or writing it "
                             "did not finish; (re-)create it with 'hpctrain shard INPUT --out DIR'")
        try:
            d = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardError(f"{str(mpath)!r} is not valid JSON ({e}); re-create the shard directory") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ShardError(f"{str(mpath)!r} is not an hpctrain shard manifest (format {FORMAT!r} missing)")
        version = d.get("version")
        if not _is_int(version) or version < 1:
            raise ShardError(f"{str(mpath)!r} has version {version!r}; expected a positive integer")
        if version > FORMAT_VERSION:
            raise ShardError(f"{str(mpath)!r} has format version {version}, newer than this hpctrain reads "
                             f"({FORMAT_VERSION}); upgrade hpctrain")
        _check_keys(d, MANIFEST_KEYS, repr(str(mpath)))
        if not isinstance(d.get("schema"), dict) or not isinstance(d.get("shards"), list):
            raise ShardError(f"{str(mpath)!r} lacks a 'schema' mapping or a 'shards' list")
        try:
            schema = Schema.from_json(d["schema"])
            shards = [ShardInfo.from_json(s, schema.n_features, schema.regression) for s in d["shards"]]
        except ShardError as e:
            raise ShardError(f"{str(mpath)!r}: {e}") from None
        if not shards:
            raise ShardError(f"{str(mpath)!r} lists no shards; the input was empty")
        meta = _check_meta(d.get("meta", {}), str(mpath))
        _check_labels(schema, shards, str(mpath))
        m = cls(version=version, schema=schema, shards=shards, root=root, meta=meta)
        seen = set()
        for s in shards:
            path = m.path(s)
            if s.file in seen:
                raise ShardError(f"{str(mpath)!r} lists shard {s.file!r} twice")
            seen.add(s.file)
            if check_files and not path.is_file():
                raise ShardError(f"{str(mpath)!r} names shard {s.file!r}, which does not exist in {str(root)!r}; "
                                 "the directory is incomplete: copy the missing file or re-create the shards")
        return m


# --- reading whole shards -------------------------------------------------------------------


def check_sha256(m: Manifest, s: ShardInfo) -> None:
    path = m.path(s)
    try:
        got = sha256_file(path)
    except FileNotFoundError:
        raise ShardError(f"shard {str(path)!r} named by the manifest does not exist") from None
    if got != s.sha256:
        raise ShardError(f"shard {str(path)!r}: sha256 {got[:16]}... != manifest {s.sha256[:16]}...; the file is "
                         "corrupt or was changed after writing: re-create it ('hpctrain shard verify DIR' lists all)")


def check_datasets(m: Manifest, s: ShardInfo, f) -> tuple[Any, Any]:
    """The ``x`` and ``y`` datasets of open shard ``f``, after checking them against the manifest."""
    path = m.path(s)
    if "x" not in f or "y" not in f:
        raise ShardError(f"shard {str(path)!r} lacks dataset 'x' or 'y' (has {sorted(f.keys())}); re-create it")
    x, y = f["x"], f["y"]
    want = (s.rows, *m.schema.sample_shape)
    if tuple(x.shape) != want or x.dtype != np.float32:
        raise ShardError(f"shard {str(path)!r}: x is {x.dtype}{tuple(x.shape)}, manifest says float32{want}; "
                         "the shard does not belong to this manifest: re-create the directory")
    ywant = (s.rows, *m.schema.y_shape)
    if tuple(y.shape) != ywant or y.dtype != m.schema.y_dtype:
        raise ShardError(f"shard {str(path)!r}: y is {y.dtype}{tuple(y.shape)}, manifest says "
                         f"{np.dtype(m.schema.y_dtype).name}{ywant}")
    return x, y


def read_rows(path: Path, dset, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [start, stop) of dataset ``dset``, a failure (bad checksum, truncation) as ShardError."""
    try:
        if out is None:
            return dset[start:stop]
        dset.read_direct(out, source_sel=np.s_[start:stop], dest_sel=np.s_[0:stop - start])
        return out
    except (OSError, ValueError, KeyError) as e:
        raise ShardError(f"shard {str(path)!r}: reading rows {start}:{stop} of {dset.name!r} failed ({e}); the file "
                         "is corrupt (checksum or truncation): re-create it ('hpctrain shard verify DIR')") from e


def iter_arrays(dir_or_manifest: str | os.PathLike | Manifest, split: str | None = None, verify: bool = False,
                *, locking: bool | None = None) -> Iterator[tuple[ShardInfo, np.ndarray, np.ndarray]]:
    """Yield ``(info, x, y)`` for each shard of ``split`` in manifest order, one shard in
    memory at a time. ``verify`` checks each file's sha256 before reading it."""
    m = Manifest.load(dir_or_manifest)
    for s in m.shards_for(split):
        if verify:
            check_sha256(m, s)
        path = m.path(s)
        with h5_open(path, "r", locking=locking) as f:
            xd, yd = check_datasets(m, s, f)
            x = read_rows(path, xd, 0, s.rows)
            y = read_rows(path, yd, 0, s.rows)
        yield s, x, y


def verify(dir_or_manifest: str | os.PathLike | Manifest, *, deep: bool = True, raise_errors: bool = False,
           locking: bool | None = None) -> list[str]:
    """Check every shard's sha256, datasets against the schema and (``deep``) read every
    chunk so fletcher32 is checked. Returns the problems found (empty when all is well);
    with ``raise_errors`` raises a ShardError listing them instead."""
    m = Manifest.load(dir_or_manifest, check_files=False)
    problems: list[str] = []
    for s in m.shards:
        path = m.path(s)
        if not path.is_file():
            problems.append(f"{s.file}: missing (the manifest names it, the directory lacks it)")
            continue
        try:
            check_sha256(m, s)
            with h5_open(path, "r", locking=locking) as f:
                xd, yd = check_datasets(m, s, f)
                if deep:
                    step = max(1, xd.chunks[0] if xd.chunks else s.rows) * 16
                    for a in range(0, s.rows, step):
                        read_rows(path, xd, a, min(a + step, s.rows))
                    y = read_rows(path, yd, 0, s.rows)
                    if m.schema.regression:
                        if not np.isfinite(y).all():
                            problems.append(f"{s.file}: non-finite regression targets")
                        continue
                    vals, cnt = np.unique(y, return_counts=True)
                    undeclared = sorted(set(vals.tolist()) - set(m.schema.classes))
                    if undeclared:
                        problems.append(f"{s.file}: labels {undeclared[:10]} are not in the manifest's schema.classes "
                                        f"{m.schema.classes} (training would index past the class list)")
                    if {int(k): int(v) for k, v in zip(vals, cnt)} != {k: v for k, v in s.class_counts.items() if v}:
                        problems.append(f"{s.file}: class counts differ from the manifest")
        except ShardError as e:
            problems.append(f"{s.file}: {e}")
    if problems and raise_errors:
        raise ShardError(f"{len(problems)} problem(s) in {str(m.root)!r}: " + "; ".join(problems))
    return problems


# --- writing ----------------------------------------------------------------------------------


def chunk_rows_for(sample_shape: Sequence[int]) -> int:
    """Rows per HDF5 chunk so one chunk is about 1 MiB of float32."""
    row_bytes = 4 * max(1, int(np.prod(sample_shape)) if len(sample_shape) else 1)
    return max(1, CHUNK_BYTES // row_bytes)


def default_rows_per_shard(sample_shape: Sequence[int], total_rows: int | None = None) -> int:
    """About 32 MiB per shard, but small inputs still get ~16 shards (never under 256 rows),
    so there are more shards than ranks to deal out."""
    row_bytes = 4 * max(1, int(np.prod(sample_shape)) if len(sample_shape) else 1)
    cap = max(1, DEFAULT_SHARD_BYTES // row_bytes)
    if total_rows is None:
        return cap
    return max(1, min(cap, max(256, math.ceil(total_rows / 16))))


class ShardWriter:
    """Buffer rows per split and write full shards; ``close()`` writes the manifest last.

    Memory is bounded by about one shard per split. Each shard is written to a temp name
    and renamed. On an exception inside ``with ShardWriter(...)`` (or :meth:`abort`), the
    shards written so far are removed and no manifest is written.

    ``out_dir`` must be absent, empty, or (with ``overwrite=True``) an existing shard
    directory, whose manifest is removed first and shard files replaced.
    """

    def __init__(self, out_dir: str | os.PathLike, *, feature_names: Sequence[str] | None,
                 sample_shape: Sequence[int], rows_per_shard: int | None = None, compression: str | None = "lzf",
                 classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                 meta: Mapping[str, Any] | None = None, shuffle_seed: int | None = None,
                 overwrite: bool = False, locking: bool | None = None, targets: int = 0) -> None:
        self.root = Path(out_dir)
        # targets > 0: regression, y holds that many float targets per row (no classes)
        if not isinstance(targets, (int, np.integer)) or isinstance(targets, bool) or targets < 0:
            raise ShardError(f"targets={targets!r}: expected 0 (class labels) or the number of regression targets")
        if targets and classes is not None:
            raise ShardError("classes are for class labels; a regression writer (targets > 0) takes none")
        self.targets = int(targets)
        # a string is iterable: "12" would become the shape (1, 2)
        if isinstance(sample_shape, (str, bytes)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in sample_shape):
            raise ShardError(f"sample_shape {sample_shape!r} must be a sequence of integers, e.g. (3,) or (1, 28, 28)")
        self.sample_shape = tuple(int(v) for v in sample_shape)
        if any(v < 1 for v in self.sample_shape):
            raise ShardError(f"sample shape {self.sample_shape} has a zero or negative dimension")
        n_feat = int(np.prod(self.sample_shape)) if self.sample_shape else 1
        names = [f"f{i}" for i in range(n_feat)] if feature_names is None else [str(v) for v in feature_names]
        if len(names) != n_feat:
            raise ShardError(f"{len(names)} feature names given for sample shape {self.sample_shape} "
                             f"({n_feat} features); give one name per flattened feature")
        self.feature_names = names
        self.rows_per_shard = int(rows_per_shard) if rows_per_shard else default_rows_per_shard(self.sample_shape)
        if self.rows_per_shard < 1:
            raise ShardError(f"rows per shard is {rows_per_shard}; expected at least 1")
        comp = None if compression in (None, "none") else compression
        if comp not in (None, "lzf", "gzip"):
            raise ShardError(f"compression {compression!r} is not one of none, lzf, gzip")
        self.compression = comp
        if classes is not None and (isinstance(classes, (str, bytes)) or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes)):
            raise ShardError(f"classes {classes!r} must be a sequence of integer class ids; give the names "
                             "as class_names")
        self.classes = sorted(int(c) for c in classes) if classes is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.meta = dict(meta or {})
        self.locking = locking
        self.chunk_rows = chunk_rows_for(self.sample_shape)
        self._rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        self._buf: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in SPLITS}
        self._buf_rows = dict.fromkeys(SPLITS, 0)
        self._count = dict.fromkeys(SPLITS, 0)
        self._written: list[ShardInfo] = []
        self._closed = False
        self._prepare_dir(overwrite)

    # -- directory handling
    def _prepare_dir(self, overwrite: bool) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise ShardError(f"output {str(root)!r} exists and is not a directory; choose another --out")
        self._created_root = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            existing = [p for p in root.iterdir()]
        except OSError as e:
            raise ShardError(f"output directory {str(root)!r} cannot be created or listed ({e.strerror or e}); "
                             "choose a writable --out") from None
        if not existing:
            return
        ours = all(p.name == MANIFEST_NAME or p.name in DERIVED_NAMES or _SHARD_NAME.match(p.name)
                   or p.name.startswith(".") for p in existing)
        if not overwrite or not ours:
            why = ("pass --force (overwrite=True) to replace it" if ours else
                   "it holds files that are not hpctrain shards; choose an empty or new directory")
            raise ShardError(f"output directory {str(root)!r} is not empty; {why}")
        # Manifest first: from here on the directory is 'not a shard dir' until close().
        with contextlib.suppress(FileNotFoundError):
            (root / MANIFEST_NAME).unlink()
        for p in existing:
            # Derived files (imputer statistics) describe the old shards: stale once replaced.
            if _SHARD_NAME.match(p.name) or p.name in DERIVED_NAMES:
                p.unlink()

    # -- writing
    def add(self, x: np.ndarray, y: np.ndarray, split: str = "train") -> None:
        if self._closed:
            raise ShardError("ShardWriter.add after close()")
        if split not in SPLITS:
            raise ShardError(f"split {split!r} is not one of {SPLITS}")
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim == 1 and self.sample_shape == (1,):
            x = x[:, None]
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ShardError(f"rows of shape {tuple(x.shape[1:])} added to a writer of sample shape "
                             f"{self.sample_shape}; every input must have the same shape")
        if self.targets:
            self._add_targets(x, y, split)
            return
        if y.shape != (len(x),):
            raise ShardError(f"{len(x)} samples but labels of shape {y.shape}; expected ({len(x)},)")
        if len(x) == 0:
            return
        if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
            raise ShardError(f"features of dtype {x.dtype} are not numeric")
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
                raise ShardError(f"label {y[bad].item()!r} (sample {bad} of this batch) is not an integer; "
                                 "labels must be integer class ids")
        elif not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
            raise ShardError(f"labels of dtype {y.dtype} are not integers")
        if y.dtype == np.uint64 and y.max() > np.iinfo(np.int64).max:
            raise ShardError(f"label {int(y.max())} does not fit the int64 labels of a shard; use class ids "
                             "below 2**63")
        if x.dtype.kind == "f" and x.dtype.itemsize > 4:
            with np.errstate(invalid="ignore"):
                big = np.isfinite(x) & (np.abs(x) > np.finfo(np.float32).max)
            if big.any():
                raise ShardError(f"features of dtype {x.dtype} hold {x.flat[np.flatnonzero(big)[0]]:g}, beyond the "
                                 "float32 range (|x| > 3.4e38) of a shard, where it would become inf: rescale "
                                 "the data first")
        y = y.astype(np.int64, copy=False)
        if self.classes is not None:
            unknown = np.setdiff1d(np.unique(y), self.classes)
            if unknown.size:
                raise ShardError(f"label(s) {unknown[:5].tolist()} are not among the declared classes {self.classes}")
        self._buf[split].append((x.astype(np.float32, copy=False), y))
        self._buf_rows[split] += len(x)
        while self._buf_rows[split] >= self.rows_per_shard:
            self._flush(split, self.rows_per_shard)

    def _add_targets(self, x: np.ndarray, y: np.ndarray, split: str) -> None:
        want = (len(x),) if self.targets == 1 else (len(x), self.targets)
        if self.targets == 1 and y.shape == (len(x), 1):
            y = y[:, 0]
        if y.shape != want:
            raise ShardError(f"{len(x)} samples but regression targets of shape {y.shape}; expected {want}")
        if len(x) == 0:
            return
        if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
            raise ShardError(f"features of dtype {x.dtype} are not numeric")
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise ShardError(f"regression targets of dtype {y.dtype} are not numbers")
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            bad = int(np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0])
            raise ShardError(f"regression target of sample {bad} of this batch is not finite (NaN, inf or beyond "
                             "float32); drop or fix those rows first")
        self._buf[split].append((x.astype(np.float32, copy=False), y))
        self._buf_rows[split] += len(x)
        while self._buf_rows[split] >= self.rows_per_shard:
            self._flush(split, self.rows_per_shard)

    def _take(self, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys, got = [], [], 0
        buf = self._buf[split]
        while got < n:
            x, y = buf[0]
            k = min(n - got, len(x))
            xs.append(x[:k])
            ys.append(y[:k])
            if k == len(x):
                buf.pop(0)
            else:
                buf[0] = (x[k:], y[k:])
            got += k
        self._buf_rows[split] -= n
        return np.concatenate(xs), np.concatenate(ys)

    def _flush(self, split: str, n: int) -> None:
        x, y = self._take(split, n)
        if self._rng is not None:
            perm = self._rng.permutation(n)
            x, y = x[perm], y[perm]
        name = f"{split}-{self._count[split]:05d}.h5"
        self._count[split] += 1
        self._written.append(self._write_file(name, split, np.ascontiguousarray(x), y))

    def _write_file(self, name: str, split: str, x: np.ndarray, y: np.ndarray) -> ShardInfo:
        dest = self.root / name
        try:
            digest = self._write_h5(dest, split, x, y)
        except OSError as e:
            # h5py reports a full disk, a quota or a file-size limit as a bare OSError from deep inside,
            # its text spread over lines by HDF5: one line, cut short, is what the CLI can print
            why = " ".join(str(e).split())[:200]
            raise ShardError(f"writing shard {str(dest)!r} failed ({why}); the file system may be full or over "
                             "quota: free space, or choose an --out on a file system with more room") from e
        vals, cnt = np.unique(y, return_counts=True) if not self.targets else ([], [])
        return ShardInfo(file=name, rows=len(x), sha256=digest, split=split,
                         class_counts={int(k): int(v) for k, v in zip(vals, cnt)},
                         stats=ColumnStats.from_array(x))

    def _write_h5(self, dest: Path, split: str, x: np.ndarray, y: np.ndarray) -> str:
        """Write one shard file atomically; returns its sha256."""
        chunk = min(self.chunk_rows, len(x))
        with atomic_path(dest) as tmp:
            with h5_open(tmp, "w", locking=self.locking) as f:
                f.attrs["format"] = FORMAT
                f.attrs["version"] = FORMAT_VERSION
                f.attrs["split"] = split
                import h5py

                names = np.array(self.feature_names, dtype=h5py.string_dtype())
                # Attribute headers are limited to 64 KiB; very wide tables keep names in a dataset.
                if sum(len(n.encode()) + 1 for n in self.feature_names) < 48_000:
                    f.attrs["feature_names"] = names
                else:
                    f.create_dataset("feature_names", data=names)
                f.create_dataset("x", data=x, chunks=(chunk, *self.sample_shape), compression=self.compression,
                                 fletcher32=True)
                f.create_dataset("y", data=y, chunks=(chunk, *y.shape[1:]), compression=self.compression,
                                 fletcher32=True)
            return sha256_file(tmp)

    def close(self) -> Manifest:
        """Flush the partial shards and write the manifest (last, atomically)."""
        if self._closed:
            raise ShardError("ShardWriter.close called twice")
        for split in SPLITS:
            if self._buf_rows[split]:
                self._flush(split, self._buf_rows[split])
        self._closed = True
        if not self._written:
            self.abort()
            raise ShardError("the input is empty: no rows were written; check the input file (only a header?) "
                             "or the source parameters")
        seen = sorted({k for s in self._written for k in s.class_counts})
        classes = self.classes if self.classes is not None else seen
        schema = Schema(sample_shape=self.sample_shape, feature_names=self.feature_names, classes=classes,
                        class_names=self.class_names, targets=self.targets)
        meta = {"compression": self.compression or "none", "chunk_rows": self.chunk_rows,
                "rows_per_shard": self.rows_per_shard, **self.meta}
        shards = sorted(self._written, key=lambda s: (SPLITS.index(s.split), s.file))
        m = Manifest(version=FORMAT_VERSION, schema=schema, shards=shards, root=self.root, meta=meta)
        try:
            m.save()
        except OSError as e:
            raise ShardError(f"writing {str(self.root / MANIFEST_NAME)!r} failed ({e}); the file system may be full "
                             "or over quota: free space, or choose an --out on a file system with more room") from e
        return m

    def _remove_written(self) -> None:
        for s in self._written:
            with contextlib.suppress(FileNotFoundError):
                (self.root / s.file).unlink()
        self._written = []

    def abort(self) -> None:
        """Remove what was written; leave no manifest."""
        self._closed = True
        self._buf = {s: [] for s in SPLITS}
        self._remove_written()
        if self._created_root:
            with contextlib.suppress(OSError):  # only if still empty: never remove what others put there
                self.root.rmdir()

    @property
    def rows_written(self) -> int:
        return sum(s.rows for s in self._written)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()
