"""What an input source yields (bounded chunks of x float32, y int64) and the parsing of
text cells into numbers and labels, with errors that name the line and column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from hpctrain.data.shards import ShardError

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


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover  (the loop returns)
