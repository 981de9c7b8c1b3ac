"""File inputs of ``hpctrain shard``: CSV/TSV (streamed), NumPy .npy/.npz and Parquet."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hpctrain.data.cells import (
    CHUNK_CELLS,
    Chunk,
    LabelParser,
    Source,
    _float_targets,
    _resolve_label,
    strings_to_float,
    to_float32,
)
from hpctrain.data.shards import ShardError


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
    from hpctrain.extras import require

    pq = require("pyarrow.parquet", f"reading Parquet ({src})")
    pat = require("pyarrow.types", "reading Parquet")
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
