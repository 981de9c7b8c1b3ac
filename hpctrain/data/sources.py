"""Input readers for ``hpctrain shard``: each yields bounded chunks of (x float32, y int64).

Supported inputs (see docs/data.md):

- ``*.csv`` / ``*.tsv`` (header required), streamed with the csv module;
- ``*.npy`` (2-D, label column chosen by ``--label``, memory-mapped) and ``*.npz`` (``x``, ``y``);
- ``*.parquet`` through pyarrow, streamed by record batch;
- ``sklearn:digits|breast_cancer|wine|iris`` (shipped with scikit-learn, no download);
- ``synthetic:classification?rows=&features=&classes=&imbalance=&missing=&seed=&shape=``.

Built-in specs accept ``?missing=F&imbalance=R&seed=S`` to inject missing values (each
feature value NaN with probability F) and class imbalance (class k of C kept with
probability R**(-k/(C-1)), so the last class is R times rarer than the first).

Memory is bounded by a chunk for the streamed formats; npz and sklearn inputs are in memory.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl

import numpy as np

from hpctrain.data.shards import Manifest, ShardError, ShardWriter, default_rows_per_shard

MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none", "?")
LABEL_GUESSES = ("label", "target", "y", "class")
CHUNK_CELLS = 1 << 19

Chunk = tuple[np.ndarray, np.ndarray]


@dataclass(kw_only=True)
class Source:
    """An input, described up front and read as a stream of chunks."""

    name: str
    feature_names: list[str]
    sample_shape: tuple[int, ...]
    rows: int | None  # None when unknown without a pass over the input
    read: Callable[[], Iterator[Chunk]]
    label: str | None = None
    classes: list[int] | None = None
    label_names: dict[str, int] | None = None  # filled while reading when labels are strings
    in_memory: bool = False
    count_rows: Callable[[], int] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    targets: int = 0  # regression: float targets per row (0: class labels)

    def chunks(self) -> Iterator[Chunk]:
        return self.read()

    def total_rows(self) -> int:
        if self.rows is None and self.count_rows is not None:
            self.rows = self.count_rows()
        if self.rows is None:
            raise ShardError(f"cannot count the rows of {self.name!r}; use --rows-per-shard instead of --shards")
        return self.rows


# --- conversions ------------------------------------------------------------------------------


def _where(lines: list[int] | None, i: int, offset: int = 0) -> str:
    return f"line {lines[i]}" if lines is not None else f"row {offset + i + 1}"


def to_float32(a: np.ndarray, names: list[str], lines: list[int] | None, src: str, offset: int = 0) -> np.ndarray:
    """``a`` (rows first) as float32. A finite value beyond float32's range is an error naming its
    row and column: casting would silently turn it into inf, which "NaN and inf are preserved"
    must not mean. ``offset`` is the row number of ``a[0]`` in the input, counted from 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(np.float32)
    if out.dtype.kind == "f" and a.dtype.itemsize > 4 and a.dtype.kind == "f":
        bad = np.isinf(out) & np.isfinite(a)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad.reshape(len(a), -1))[0])
            col = names[j] if j < len(names) else f"feature {j}"
            v = a.reshape(len(a), -1)[i, j].item()
            raise ShardError(f"{src}: {_where(lines, i, offset)}, column {col!r}: value {v!r}"
                             " is outside the float32 range (about +-3.4e38); rescale the column before sharding")
    return out


def strings_to_float(block: np.ndarray, names: list[str], lines: list[int] | None, src: str,
                     offset: int = 0) -> np.ndarray:
    """Parse a 2-D array of strings to float32; missing tokens become NaN; a bad cell is
    reported by line (or row, counted from ``offset``) and column."""
    try:
        out = block.astype(np.float64)
    except ValueError:
        out = _parse_columns(block, names, lines, src, offset)
    _check_overflow(block, out, names, lines, src, offset)
    return to_float32(out, names, lines, src, offset)


def _parse_columns(block: np.ndarray, names: list[str], lines: list[int] | None, src: str,
                   offset: int) -> np.ndarray:
    out = np.empty(block.shape, np.float64)
    for j in range(block.shape[1]):
        col = np.char.strip(block[:, j].astype(str))
        try:
            out[:, j] = col.astype(np.float64)
            continue
        except ValueError:
            pass
        col = col.copy()
        col[np.isin(np.char.lower(col), MISSING_TOKENS)] = "nan"
        try:
            out[:, j] = col.astype(np.float64)
        except ValueError:
            for i, v in enumerate(col):
                try:
                    float(v)
                except ValueError:
                    raise ShardError(f"{src}: {_where(lines, i, offset)}, column {names[j]!r}: value {str(v)[:40]!r} "
                                     "is not a number; fix the value, or leave it empty for a missing value") from None
    return out


INF_TOKENS = ("inf", "infinity")


def _check_overflow(block: np.ndarray, parsed: np.ndarray, names: list[str], lines: list[int] | None, src: str,
                    offset: int) -> None:
    """A written ``inf`` is kept (counted and flagged as infinite), but a number like 1e400 is
    already inf in float64, so to_float32's range check cannot see it: refuse it here, as 1e40 is."""
    inf = np.isinf(parsed)
    if not inf.any():
        return
    words = np.char.lstrip(np.char.lower(np.char.strip(block[inf].astype(str))), "+-")
    bad = ~np.isin(words, INF_TOKENS)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(inf)[int(np.flatnonzero(bad)[0])])
        col = names[j] if j < len(names) else f"feature {j}"
        raise ShardError(f"{src}: {_where(lines, i, offset)}, column {col!r}: value {str(block[i, j]).strip()[:40]!r} "
                         "is outside the float32 range (about +-3.4e38); rescale the column before sharding (write "
                         "inf or -inf for a value that is meant to be infinite)")


class LabelParser:
    """Integer labels pass through; string labels get ids in order of first appearance.
    The first chunk decides which, for the whole input."""

    def __init__(self, src: str, column: str, regression: bool = False) -> None:
        self.src, self.column = src, column
        self.names: dict[str, int] | None = None
        self.numeric: bool | None = True if regression else None
        self.regression = regression

    def __call__(self, col: np.ndarray, lines: list[int] | None) -> np.ndarray:
        col = np.char.strip(np.asarray(col).astype(str))
        empty = np.isin(np.char.lower(col), MISSING_TOKENS)
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise ShardError(f"{self.src}: {_where(lines, i)}: label column {self.column!r} is empty or missing "
                             f"({str(col[i])!r}); every row needs a label")
        if self.numeric is None:
            self.numeric = all(_is_number(v) for v in col.tolist())
            if not self.numeric:
                self.names = {}
        if self.numeric:
            try:
                v = col.astype(np.float64)
            except ValueError:
                i = next(i for i, s in enumerate(col.tolist()) if not _is_number(s))
                raise ShardError(f"{self.src}: {_where(lines, i)}: label {str(col[i])!r} in column {self.column!r} "
                                 "is not a number" + ("; regression targets must be numbers" if self.regression
                                                      else ", but earlier labels were numbers")) from None
            if self.regression:
                return _float_targets(v, self.src, lines=lines)
            bad = ~np.isfinite(v) | (v != np.round(np.nan_to_num(v))) | (np.abs(np.nan_to_num(v)) >= 2**62)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ShardError(f"{self.src}: {_where(lines, i)}: label {str(col[i])!r} in column {self.column!r} "
                                 "is not an integer class id")
            return v.astype(np.int64)
        assert self.names is not None
        out = np.empty(len(col), np.int64)
        for i, s in enumerate(col.tolist()):
            out[i] = self.names.setdefault(s, len(self.names))
        return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _resolve_label(columns: list[str], label: str | None, src: str) -> int:
    if label is not None:
        if label in columns:
            return columns.index(label)
        raise ShardError(f"{src}: label column {label!r} does not exist; columns are {columns[:20]}"
                         f"{' ...' if len(columns) > 20 else ''}; pass one of them with --label")
    for guess in LABEL_GUESSES:
        for i, c in enumerate(columns):
            if c.strip().lower() == guess:
                return i
    raise ShardError(f"{src}: no label column found (looked for {list(LABEL_GUESSES)}); name it with --label COL")


# --- CSV / TSV --------------------------------------------------------------------------------


def csv_source(path: Path, *, label: str | None, delimiter: str | None = None, regression: bool = False) -> Source:
    src = str(path)
    delim = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, delimiter=delim), None)
    except UnicodeDecodeError:
        raise ShardError(f"{src} is not UTF-8 text; convert it (iconv -t utf-8) or pass .npy/.parquet") from None
    if not header or all(not h.strip() for h in header):
        raise ShardError(f"{src} is empty: expected a header line and data rows")
    columns = [h.strip() for h in header]
    if len(columns) == 1 and any(d in columns[0] for d in ";|\t," if d != delim):
        raise ShardError(f"{src}: the header {columns[0][:60]!r} is one column when split on {delim!r}; "
                         "the file uses another delimiter: convert it to comma- (.csv) or tab-separated (.tsv)")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise ShardError(f"{src}: column name(s) {dup[:5]} appear more than once in the header; "
                         "rename them so every column is unique")
    li = _resolve_label(columns, label, src)
    feat_idx = [i for i in range(len(columns)) if i != li]
    if not feat_idx:
        raise ShardError(f"{src}: only the label column {columns[li]!r}; expected feature columns too")
    names = [columns[i] for i in feat_idx]
    chunk_rows = max(64, CHUNK_CELLS // len(columns))
    labels = LabelParser(src, columns[li], regression)
    s = Source(name=src, feature_names=names, sample_shape=(len(names),), rows=None, read=lambda: iter(()),
               label=columns[li], targets=int(regression))

    def convert(rows: list[list[str]], lines: list[int]) -> Chunk:
        block = np.array(rows, dtype=str)
        x = strings_to_float(block[:, feat_idx], names, lines, src)
        y = labels(block[:, li], lines)
        s.label_names = labels.names
        return x, y

    def read() -> Iterator[Chunk]:
        with open(path, newline="", encoding="utf-8-sig") as f:
            r = csv.reader(f, delimiter=delim)
            next(r)
            rows: list[list[str]] = []
            lines: list[int] = []
            try:
                for rec in r:
                    if not rec or (len(rec) == 1 and not rec[0].strip()):
                        continue
                    if len(rec) != len(columns):
                        raise ShardError(f"{src}: line {r.line_num} has {len(rec)} fields, the header has "
                                         f"{len(columns)}; fix the row (quote values that contain {delim!r})")
                    rows.append(rec)
                    lines.append(r.line_num)
                    if len(rows) >= chunk_rows:
                        yield convert(rows, lines)
                        rows, lines = [], []
            except csv.Error as e:
                raise ShardError(f"{src}: line {r.line_num}: malformed CSV ({e})") from None
            except UnicodeDecodeError:
                raise ShardError(f"{src}: near line {r.line_num}: not UTF-8 text") from None
            if rows:
                yield convert(rows, lines)

    def count() -> int:
        with open(path, newline="", encoding="utf-8-sig") as f:
            r = csv.reader(f, delimiter=delim)
            next(r)
            return sum(1 for rec in r if rec and not (len(rec) == 1 and not rec[0].strip()))

    s.read, s.count_rows = read, count
    return s


# --- NumPy ------------------------------------------------------------------------------------


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def _numpy_load_error(src: str, kind: str, magic: bytes, e: Exception) -> ShardError:
    """numpy treats any file without its magic bytes as a pickle and suggests allow_pickle=True,
    which is the wrong advice for a junk file and unsafe for a hostile one: say what the file is."""
    try:
        with open(src, "rb") as f:
            head = f.read(len(magic))
    except OSError:
        head = magic
    if head != magic:
        return ShardError(f"{src} is not a valid {kind} file (it does not start with the {kind} signature "
                          f"{magic!r}); check that it was written with numpy.{'save' if kind == '.npy' else 'savez'}"
                          ", or pass a CSV/Parquet file")
    if "pickle" in str(e) or "Python objects" in str(e):
        return ShardError(f"{src} holds pickled Python objects (an object array), which hpctrain refuses to load: "
                          "unpickling a file can run arbitrary code. Save numeric arrays instead (a float or int "
                          "dtype)")
    return ShardError(f"{src} is not a readable {kind} file ({e}); it is truncated or corrupt: write it again")


def npy_source(path: Path, *, label: str | None, regression: bool = False) -> Source:
    src = str(path)
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise _numpy_load_error(src, ".npy", NPY_MAGIC, e) from None
    if a.ndim != 2 or a.shape[1] < 2 or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ShardError(f"{src}: a .npy input must be a numeric 2-D array (rows x columns, one of them the label); "
                         f"got {a.dtype}{a.shape}. Use a .npz with 'x' and 'y' for other shapes")
    try:
        li = int(label) if label is not None else a.shape[1] - 1
    except ValueError:
        raise ShardError(f"{src}: --label for a .npy is a column index, got {label!r}") from None
    if not -a.shape[1] <= li < a.shape[1]:
        raise ShardError(f"{src}: label column {li} does not exist; the array has {a.shape[1]} columns")
    li %= a.shape[1]
    feat = [i for i in range(a.shape[1]) if i != li]
    step = max(1, CHUNK_CELLS * 4 // a.shape[1])

    def read() -> Iterator[Chunk]:
        for s in range(0, len(a), step):
            block = np.asarray(a[s:s + step])
            y = _float_targets(block[:, li], src, s) if regression else _int_labels(block[:, li], src, s)
            yield to_float32(block[:, feat], [f"c{i}" for i in feat], None, src, s), y

    return Source(name=src, feature_names=[f"c{i}" for i in feat], sample_shape=(len(feat),), rows=len(a),
                  read=read, label=f"c{li}", targets=int(regression))


def _float_targets(y: np.ndarray, src: str, offset: int = 0, lines: list[int] | None = None) -> np.ndarray:
    """Regression targets as float32; a non-finite one (or one beyond float32) names its row."""
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ShardError(f"{src}: regression targets of dtype {y.dtype} are not numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        f = y.astype(np.float32)
    bad = ~np.isfinite(f.reshape(len(f), -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = _where(lines, i) if lines is not None else f"row {offset + i + 1}"
        raise ShardError(f"{src}: {where}: regression target {y[i].tolist()!r} is missing, infinite or beyond "
                         "float32; drop or fix those rows")
    return f


def _int_labels(y: np.ndarray, src: str, offset: int = 0) -> np.ndarray:
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ShardError(f"{src}: row {offset + i + 1}: label {y[i].item()!r} is not an integer class id")
        return y.astype(np.int64)
    raise ShardError(f"{src}: labels of dtype {y.dtype} are not integers")


def npz_source(path: Path, regression: bool = False) -> Source:
    src = str(path)
    try:
        z = np.load(path, allow_pickle=False)
        keys = list(z.keys())
    except (ValueError, OSError) as e:
        raise _numpy_load_error(src, ".npz", ZIP_MAGIC, e) from None
    if "x" not in keys or "y" not in keys:
        raise ShardError(f"{src}: a .npz input needs arrays 'x' and 'y'; it has {keys}")
    try:
        x, y = z["x"], z["y"]
        names_arr = z["feature_names"] if "feature_names" in keys else None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise _numpy_load_error(src, ".npz", ZIP_MAGIC, e) from None
    if x.ndim < 1 or len(x) != len(y) or not (y.ndim == 1 or (regression and y.ndim == 2 and y.shape[1] >= 1)):
        want = "y (N,) or (N, targets)" if regression else "y (N,)"
        raise ShardError(f"{src}: x has shape {x.shape} and y {y.shape}; expected x (N, ...) and {want}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ShardError(f"{src}: x has dtype {x.dtype}; expected numbers")
    if x.ndim == 1:
        x = x[:, None]
    n_feat = int(np.prod(x.shape[1:]))
    names = [str(v) for v in names_arr] if names_arr is not None else [f"f{i}" for i in range(n_feat)]
    if len(names) != n_feat:
        raise ShardError(f"{src}: {len(names)} feature_names for {n_feat} features")
    if regression:
        yy = _float_targets(y, src)
        return _memory_source(src, to_float32(x, names, None, src), yy, names,
                              targets=1 if yy.ndim == 1 else yy.shape[1])
    yy = _int_labels(y, src)
    return _memory_source(src, to_float32(x, names, None, src), yy, names)


def _memory_source(name: str, x: np.ndarray, y: np.ndarray, names: list[str], **kw: Any) -> Source:
    def read() -> Iterator[Chunk]:
        step = max(1, CHUNK_CELLS * 4 // max(1, int(np.prod(x.shape[1:]))))
        for s in range(0, len(x), step):
            yield x[s:s + step], y[s:s + step]

    return Source(name=name, feature_names=names, sample_shape=tuple(x.shape[1:]), rows=len(x), read=read,
                  in_memory=True, **kw)


# --- Parquet ----------------------------------------------------------------------------------


def parquet_source(path: Path, *, label: str | None) -> Source:
    src = str(path)
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pat
    except ImportError:
        raise ShardError("reading Parquet needs pyarrow: pip install pyarrow (or the 'dev' extra)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001  pyarrow raises several unrelated types for bad files
        raise ShardError(f"{src} is not a readable Parquet file ({e})") from None
    columns = list(pf.schema_arrow.names)
    li = _resolve_label(columns, label, src)
    names = [c for i, c in enumerate(columns) if i != li]
    if not names:
        raise ShardError(f"{src}: only the label column; expected feature columns too")
    for c in names:
        t = pf.schema_arrow.field(c).type
        if not (pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t) or pat.is_string(t)
                or pat.is_large_string(t) or pat.is_decimal(t) or pat.is_null(t)):
            raise ShardError(f"{src}: column {c!r} has type {t}; feature columns must be numeric")
    labels = LabelParser(src, columns[li])
    s = Source(name=src, feature_names=names, sample_shape=(len(names),), rows=pf.metadata.num_rows,
               read=lambda: iter(()), label=columns[li])

    def read() -> Iterator[Chunk]:
        start = 0
        for batch in pf.iter_batches(batch_size=max(64, CHUNK_CELLS // len(columns))):
            n = batch.num_rows
            lines = None
            x = np.empty((n, len(names)), np.float32)
            for j, c in enumerate(names):
                col = batch.column(c)
                t = col.type
                if pat.is_string(t) or pat.is_large_string(t):
                    vals = np.array(["" if v is None else v for v in col.to_pylist()], dtype=str)
                    x[:, j] = strings_to_float(vals[:, None], [c], lines, src, start)[:, 0]
                else:
                    v = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
                    x[:, j] = to_float32(v[:, None], [c], None, src, start)[:, 0]
            lab = batch.column(columns[li])
            if lab.null_count:
                i = next(i for i, v in enumerate(lab.to_pylist()) if v is None)
                raise ShardError(f"{src}: row {start + i + 1}: label column {columns[li]!r} is null")
            if pat.is_integer(lab.type) or pat.is_boolean(lab.type):
                y = np.asarray(lab.to_numpy(zero_copy_only=False)).astype(np.int64)
            else:
                y = labels(np.array([str(v) for v in lab.to_pylist()]), None)
                s.label_names = labels.names
            start += n
            yield x, y

    s.read = read
    return s


# --- built-in datasets ------------------------------------------------------------------------

SKLEARN = ("digits", "breast_cancer", "wine", "iris", "diabetes")
SKLEARN_REGRESSION = ("diabetes",)  # float targets: shard these with --task regression
COMMON_PARAMS = {"missing": float, "imbalance": float, "seed": int}
SKLEARN_PARAMS = {**COMMON_PARAMS, "flat": int}
SYNTH_PARAMS = {**COMMON_PARAMS, "rows": int, "features": int, "classes": int, "shape": str, "sep": float}


# numpy's Generator takes any non-negative int, but scikit-learn's random_state and numpy's legacy
# seeding stop at 2**32 - 1; one range for every seed keeps a seed valid wherever it is passed on.
SEED_LIMIT = 2**32
# Ceilings far above any real synthetic set, low enough that a typo (an extra three zeros) fails
# at once instead of filling a disk or allocating the class means (classes x features floats).
SYNTH_MAX_ROWS = 10**9
SYNTH_MAX_FEATURES = 10**6
SYNTH_MAX_CLASSES = 10**4
SYNTH_MAX_CENTER_VALUES = 2**28  # classes x features: 1 GiB of float32 class means


def check_seed(seed: Any, what: str = "--seed") -> int:
    """``seed`` if it is an integer in [0, 2**32); else a ShardError naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ShardError(f"{what} {seed!r}: expected an integer from 0 to {SEED_LIMIT - 1} (2**32 - 1), the range "
                         "scikit-learn and numpy accept as a seed")
    return int(seed)


def _params(query: str, allowed: dict[str, type], spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if k not in allowed:
            raise ShardError(f"{spec!r}: unknown parameter {k!r}; valid: {', '.join(sorted(allowed))}")
        try:
            out[k] = allowed[k](v)
        except ValueError:
            raise ShardError(f"{spec!r}: parameter {k}={v!r} is not a {allowed[k].__name__}") from None
    if not 0.0 <= out.get("missing", 0.0) < 1.0:
        raise ShardError(f"{spec!r}: missing={out['missing']} must be in [0, 1)")
    if not 1.0 <= out.get("imbalance", 1.0) < math.inf:
        raise ShardError(f"{spec!r}: imbalance={out['imbalance']} must be a finite number >= 1 (the "
                         "majority/minority ratio)")
    if not math.isfinite(out.get("sep", 1.0)):
        raise ShardError(f"{spec!r}: sep={out['sep']} must be a finite number (the scale of the class means)")
    if "seed" in out:
        check_seed(out["seed"], f"{spec!r}: seed")
    return out


def class_keep_probs(n_classes: int, imbalance: float) -> np.ndarray:
    """Class k of C is kept (or drawn) with weight R**(-k/(C-1)): the first class is the
    majority, the last R times rarer."""
    if n_classes <= 1 or imbalance <= 1.0:
        return np.ones(max(n_classes, 1))
    return imbalance ** (-np.arange(n_classes) / (n_classes - 1))


def inject(chunks: Iterator[Chunk], classes: list[int], *, missing: float, imbalance: float,
           seed: int) -> Iterator[Chunk]:
    """Subsample classes to the imbalance ratio and blank features to NaN, reproducibly."""
    rng = np.random.default_rng([seed, 7])
    keep = class_keep_probs(len(classes), imbalance)
    index = {c: i for i, c in enumerate(classes)}
    for x, y in chunks:
        if imbalance > 1.0:
            p = keep[np.array([index[int(v)] for v in y], dtype=np.int64)] if len(y) else np.zeros(0)
            m = rng.random(len(y)) < p
            x, y = x[m], y[m]
        if missing > 0.0:
            x = x.copy()
            x[rng.random(x.shape) < missing] = np.nan
        yield x, y


def sklearn_source(name: str, query: str, spec: str, regression: bool = False) -> Source:
    p = _params(query, SKLEARN_PARAMS, spec)
    if name not in SKLEARN:
        raise ShardError(f"{spec!r}: unknown scikit-learn dataset {name!r}; choose one of "
                         f"{', '.join('sklearn:' + s for s in SKLEARN)}")
    try:
        from sklearn import datasets
    except ImportError:
        raise ShardError(f"{spec!r} needs scikit-learn: pip install scikit-learn") from None
    b = getattr(datasets, f"load_{name}")()
    x = np.asarray(b.data, dtype=np.float32)
    names = [str(v) for v in getattr(b, "feature_names", [f"f{i}" for i in range(x.shape[1])])]
    if (name in SKLEARN_REGRESSION) != regression:
        raise ShardError(f"{spec!r} is a {'regression' if name in SKLEARN_REGRESSION else 'classification'} "
                         f"dataset; {'pass' if name in SKLEARN_REGRESSION else 'drop'} --task regression")
    if regression:
        if p.get("imbalance", 1.0) > 1 or p.get("missing", 0.0) > 0:
            raise ShardError(f"{spec!r}: imbalance= and missing= are for class labels; remove them")
        return _memory_source(spec, x, np.asarray(b.target, dtype=np.float32), names, params=p, targets=1)
    y = np.asarray(b.target, dtype=np.int64)
    if name == "digits" and not p.get("flat"):
        x = x.reshape(-1, 1, 8, 8)  # an image dataset: (C, H, W) for the CNN; ?flat=1 keeps 64 columns
    classes = sorted(int(c) for c in np.unique(y))
    src = _memory_source(spec, x, y, names, classes=classes, params=p)
    if p.get("missing", 0.0) > 0 or p.get("imbalance", 1.0) > 1:
        base = src.read
        src.read = lambda: inject(base(), classes, missing=p.get("missing", 0.0),
                                  imbalance=p.get("imbalance", 1.0), seed=p.get("seed", 0))
        if p.get("imbalance", 1.0) > 1:
            src.rows = None
            src.count_rows = lambda: sum(len(c[1]) for c in src.read())
    return src


def synthetic_regression(query: str, spec: str) -> Source:
    """``synthetic:regression?rows=&features=&targets=&noise=&seed=``: y = x W + noise (one or several targets)."""
    p = _params(query, {"rows": int, "features": int, "targets": int, "noise": float, "seed": int}, spec)
    rows, d, k, seed = p.get("rows", 2000), p.get("features", 10), p.get("targets", 1), p.get("seed", 0)
    if not (1 <= rows <= SYNTH_MAX_ROWS and 1 <= d <= 10_000 and 1 <= k <= 1000):
        raise ShardError(f"{spec!r}: need 1 <= rows <= {SYNTH_MAX_ROWS:,}, 1 <= features <= 10000 and "
                         "1 <= targets <= 1000")
    w = np.random.default_rng([seed, 1]).standard_normal((d, k)).astype(np.float32)
    step = max(1, CHUNK_CELLS * 8 // d)

    def read() -> Iterator[Chunk]:
        for i, s in enumerate(range(0, rows, step)):
            n = min(step, rows - s)
            rng = np.random.default_rng([seed, 2, i])
            x = rng.standard_normal((n, d), dtype=np.float32)
            y = x @ w + p.get("noise", 0.1) * rng.standard_normal((n, k), dtype=np.float32)
            yield x, (y[:, 0] if k == 1 else y)

    return Source(name=spec, feature_names=[f"f{i}" for i in range(d)], sample_shape=(d,), rows=rows, read=read,
                  params=p, targets=k)


def synthetic_source(kind: str, query: str, spec: str, regression: bool = False) -> Source:
    if (kind == "regression") != regression:
        raise ShardError(f"{spec!r}: synthetic:{kind} {'needs' if kind == 'regression' else 'is not for'} "
                         "--task regression")
    if kind == "regression":
        return synthetic_regression(query, spec)
    if kind != "classification":
        raise ShardError(f"{spec!r}: unknown synthetic kind {kind!r}; use synthetic:classification?rows=... or "
                         "synthetic:regression?rows=...")
    p = _params(query, SYNTH_PARAMS, spec)
    rows, n_classes, seed = p.get("rows", 10_000), p.get("classes", 2), p.get("seed", 0)
    if "shape" in p:
        try:
            shape = tuple(int(v) for v in p["shape"].lower().split("x"))
        except ValueError:
            raise ShardError(f"{spec!r}: shape={p['shape']!r} is not like 1x8x8") from None
    else:
        shape = (p.get("features", 20),)
    if rows < 1 or n_classes < 2 or any(v < 1 for v in shape):
        raise ShardError(f"{spec!r}: need rows >= 1, classes >= 2 and positive feature counts")
    d = math.prod(shape)
    if rows > SYNTH_MAX_ROWS or d > SYNTH_MAX_FEATURES or n_classes > SYNTH_MAX_CLASSES:
        raise ShardError(f"{spec!r}: rows={rows}, {d} features, classes={n_classes}; a synthetic set is limited to "
                         f"{SYNTH_MAX_ROWS:,} rows, {SYNTH_MAX_FEATURES:,} features and {SYNTH_MAX_CLASSES:,} classes "
                         f"({_human(rows * (4 * d + 8))} uncompressed as asked); check for extra zeros")
    if n_classes * d > SYNTH_MAX_CENTER_VALUES:
        raise ShardError(f"{spec!r}: classes={n_classes} x {d} features need {_human(4 * n_classes * d)} of "
                         f"class means in memory (limit {_human(4 * SYNTH_MAX_CENTER_VALUES)}); use fewer classes or "
                         "features")
    # Class means on a scale where the classes overlap a little: learnable, not trivial.
    centers = (np.random.default_rng([seed, 1]).standard_normal((n_classes, d)) * p.get("sep", 1.0)).astype(np.float32)
    prior = class_keep_probs(n_classes, p.get("imbalance", 1.0))
    prior = prior / prior.sum()
    missing = p.get("missing", 0.0)
    step = max(1, CHUNK_CELLS * 8 // d)

    def read() -> Iterator[Chunk]:
        for i, s in enumerate(range(0, rows, step)):
            n = min(step, rows - s)
            rng = np.random.default_rng([seed, 2, i])
            y = rng.choice(n_classes, size=n, p=prior).astype(np.int64)
            x = rng.standard_normal((n, d), dtype=np.float32)
            x += centers[y]
            if missing > 0:
                x[rng.random((n, d)) < missing] = np.nan
            yield x.reshape(n, *shape), y

    return Source(name=spec, feature_names=[f"f{i}" for i in range(d)], sample_shape=shape, rows=rows, read=read,
                  classes=list(range(n_classes)), params=p)


def open_source(spec: str, *, label: str | None = None, task: str = "classification") -> Source:
    """The Source for an input path or a ``sklearn:``/``synthetic:`` spec; ``task="regression"``
    reads the label column as float targets."""
    if task not in ("classification", "regression"):
        raise ShardError(f"--task {task!r}: expected classification or regression")
    reg = task == "regression"
    if spec.startswith("sklearn:") or spec.startswith("synthetic:"):
        kind, _, rest = spec.partition(":")
        name, _, query = rest.partition("?")
        if kind == "sklearn":
            return sklearn_source(name, query, spec, reg)
        return synthetic_source(name, query, spec, reg)
    path = Path(spec)
    if not path.exists():
        raise ShardError(f"input {spec!r} does not exist; pass a CSV/TSV, .npy/.npz or .parquet file, or "
                         "sklearn:digits / synthetic:classification?rows=...")
    if path.is_dir():
        raise ShardError(f"input {spec!r} is a directory; pass a file")
    if not os.access(path, os.R_OK):
        raise ShardError(f"input {spec!r} is not readable (permissions)")
    if path.stat().st_size == 0:
        raise ShardError(f"input {spec!r} is empty")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab", ".txt"):
        return csv_source(path, label=label, regression=reg)
    if suffix == ".npy":
        return npy_source(path, label=label, regression=reg)
    if suffix == ".npz":
        return npz_source(path, reg)
    if suffix in (".parquet", ".pq"):
        if reg:
            raise ShardError(f"input {spec!r}: --task regression reads CSV/TSV, .npy and .npz; convert the Parquet "
                             "file to CSV first")
        return parquet_source(path, label=label)
    raise ShardError(f"input {spec!r}: unknown format {suffix!r}; expected .csv, .tsv, .npy, .npz or .parquet")


# --- splitting and writing --------------------------------------------------------------------


class SplitAssigner:
    """Streaming, stratified train/val split: within each class, exactly floor or ceil of
    ``fraction`` of the rows go to val, spread evenly from a seeded random phase."""

    def __init__(self, fraction: float, seed: int) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ShardError(f"val fraction {fraction} must be in [0, 1)")
        self.fraction = fraction
        self.rng = np.random.default_rng([seed, 3])
        self.seen: dict[int, int] = {}
        self.phase: dict[int, float] = {}

    def __call__(self, y: np.ndarray) -> np.ndarray:
        val = np.zeros(len(y), bool)
        if self.fraction == 0.0 or len(y) == 0:
            return val
        for c in np.unique(y).tolist():
            idx = np.flatnonzero(y == c)
            k0 = self.seen.get(c, 0)
            ph = self.phase.setdefault(c, float(self.rng.random()))
            k = np.arange(k0, k0 + len(idx), dtype=np.float64)
            val[idx] = np.floor((k + 1) * self.fraction + ph) > np.floor(k * self.fraction + ph)
            self.seen[c] = k0 + len(idx)
        return val


def write_shards(spec: str, out: str | os.PathLike, *, shards: int | None = None, rows_per_shard: int | None = None,
                 label: str | None = None, compression: str = "lzf", seed: int = 0, val_fraction: float = 0.0,
                 shuffle: bool = True, overwrite: bool = False, task: str = "classification") -> Manifest:
    """Convert input ``spec`` to a shard directory ``out`` in bounded memory; returns its manifest."""
    if shards is not None and rows_per_shard is not None:
        raise ShardError("give --shards or --rows-per-shard, not both")
    if shards is not None and shards < 1:
        raise ShardError(f"--shards {shards}: expected at least 1")
    check_seed(seed)
    src = open_source(spec, label=label, task=task)
    if shards is not None:
        total = src.total_rows()
        if total == 0:
            raise ShardError(f"input {spec!r} is empty: no data rows")
        rows_per_shard = max(1, math.ceil(total * (1.0 - val_fraction) / shards))
    elif rows_per_shard is None:
        # Counting an in-memory input is cheap and lets small inputs get several shards.
        total = src.total_rows() if src.rows is not None or src.in_memory else None
        rows_per_shard = default_rows_per_shard(src.sample_shape, total)
    if src.rows is not None:
        # CSV rows are unknown until the file is read, and its size bounds nothing: "1," is two
        # bytes of text and four of float32, "0.123456789," twelve. So only known counts are checked.
        check_space(spec, src.rows, src.sample_shape, out, compression=compression, overwrite=overwrite)
    split = SplitAssigner(val_fraction, seed)
    meta = {"source": spec, "label": src.label, "seed": seed, "val_fraction": val_fraction, "shuffled": shuffle,
            "params": src.params}
    if src.targets:
        meta["task"] = "regression"
    writer = ShardWriter(out, feature_names=src.feature_names, sample_shape=src.sample_shape,
                         rows_per_shard=rows_per_shard, compression=compression, classes=src.classes, meta=meta,
                         shuffle_seed=seed if shuffle else None, overwrite=overwrite, targets=src.targets)
    with writer:
        chunks = src.chunks()
        if shuffle and src.in_memory:
            chunks = _shuffled(chunks, seed)
        for x, y in chunks:
            # regression: one stratum (the split is even over the input's order, not per class)
            v = split(np.zeros(len(y), np.int64) if src.targets else y)
            if v.any():
                writer.add(x[~v], y[~v], "train")
                writer.add(x[v], y[v], "val")
            else:
                writer.add(x, y, "train")
        if src.label_names is not None:
            writer.class_names = sorted(src.label_names, key=src.label_names.__getitem__)
        return writer.close()


def shard_bytes(rows: int, sample_shape: tuple[int, ...]) -> int:
    """Uncompressed size of ``rows`` shard rows: float32 features and an int64 label each."""
    return rows * (4 * math.prod(sample_shape) + 8)


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or would: its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover  (the loop returns)


def check_space(spec: str, rows: int, sample_shape: tuple[int, ...], out: str | os.PathLike, *,
                compression: str | None, overwrite: bool) -> None:
    """Refuse before writing when the uncompressed shards cannot fit in the free space of ``out``'s
    file system. Compression may make them smaller, by an amount no one knows before writing, so
    the uncompressed size is what is compared: a refusal errs on the side of not filling the disk."""
    need = shard_bytes(rows, sample_shape)
    free = free_bytes(out)
    root = Path(out)
    if overwrite and root.is_dir():
        # --force replaces the shards there: their space comes back before the new ones need it
        free += sum(p.stat().st_size for p in root.iterdir() if p.is_file() and p.name.endswith((".h5", ".json")))
    if need <= free:
        return
    n_feat = math.prod(sample_shape)
    packed = "" if compression in (None, "none") else (
        f"; {compression} compression may shrink that, by an amount only known after writing")
    fix = "a smaller rows=" if spec.startswith("synthetic:") else "a subset of the input"
    raise ShardError(f"{spec!r}: the shards need about {_human(need)} ({rows:,} rows x {n_feat:,} features x 4 bytes "
                     f"+ an 8-byte label, uncompressed{packed}), but the file system of {str(out)!r} has "
                     f"{_human(free)} free; shard {fix}, or choose an --out on a file system with more space")


def _shuffled(chunks: Iterator[Chunk], seed: int) -> Iterator[Chunk]:
    # In-memory sources only: gather everything, permute once, re-chunk.
    parts = list(chunks)
    if not parts:
        return
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    perm = np.random.default_rng([seed, 4]).permutation(len(y))
    step = max(1, len(parts[0][1]))
    for s in range(0, len(y), step):
        yield x[perm[s:s + step]], y[perm[s:s + step]]
