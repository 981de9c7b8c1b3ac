"""Request bodies to arrays (pure: no HTTP, no torch), with the 4xx status for every bad input.

The body of ``POST /predict`` is a JSON object, either ``{"instances": [SAMPLE, ...]}`` or
``{"instance": SAMPLE}``. A SAMPLE is a flat list of the model's features, or nested to the
model's sample shape; ``null`` (or ``NaN``) marks a missing value, which the saved imputer
fills in as in training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

F32_MAX = float(np.finfo(np.float32).max)


class RequestError(Exception):
    """A bad request: ``status`` is the HTTP code, the message says what was wrong and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Schema:
    sample_shape: tuple[int, ...]
    missing_ok: bool  # an imputer (or on_nan=zero) fills missing values

    @property
    def n_features(self) -> int:
        return int(math.prod(self.sample_shape))


def parse_body(body: bytes, schema: Schema) -> np.ndarray:
    """``(N, *sample_shape)`` float32 rows, or :class:`RequestError`."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RequestError(400, f"the body is not JSON ({type(e).__name__}: {str(e)[:80]}); send "
                                '{"instances": [[f0, f1, ...], ...]} with Content-Type: application/json') from None
    if not isinstance(doc, dict) or not ({"instances", "instance"} & doc.keys()):
        got = type(doc).__name__ if not isinstance(doc, dict) else f"keys {sorted(doc)[:5]}"
        raise RequestError(422, f"the body is a JSON {got}; expected an object with \"instances\" (a list of "
                                "samples) or \"instance\" (one sample)")
    extra = set(doc) - {"instances", "instance"}
    if extra or len(doc) != 1:
        raise RequestError(422, f"unexpected keys {sorted(extra) or sorted(doc)}; send exactly one of "
                                "\"instances\" or \"instance\"")
    single = "instance" in doc
    rows = [doc["instance"]] if single else doc["instances"]
    if not isinstance(rows, list):
        raise RequestError(422, f"\"instances\" is a {type(rows).__name__}; expected a list of samples")
    if not rows:
        raise RequestError(422, "\"instances\" is empty; send at least one sample")
    return to_rows(rows, schema)


_NUMBER_OR_NULL = frozenset({float, int, type(None)})


def _flat_rows(rows: list, per: int) -> np.ndarray | None:
    """The common case, fast: every sample a flat list of ``per`` JSON numbers or nulls, as
    float64 (null -> NaN). None when anything else is there, for :func:`to_rows`' checks that
    name the problem. At one sample per request this was most of the parsing cost (about
    40 us of 70 us for the demo's 64 features)."""
    for r in rows:
        if type(r) is not list or len(r) != per or not _NUMBER_OR_NULL.issuperset(map(type, r)):
            return None
    try:
        return np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError):  # an integer beyond any float: the slow path reports it
        return None


def to_rows(rows: list, schema: Schema) -> np.ndarray:
    per = schema.n_features
    x = _flat_rows(rows, per)
    if x is not None:
        return _checked(x.reshape((len(x), *schema.sample_shape)), schema)
    try:
        a = np.array(rows, dtype=object)
    except ValueError:
        a = None
    if a is None or a.dtype != object or any(isinstance(v, list) for v in a.flat):
        raise RequestError(422, f"the samples are ragged (lists of different lengths); each sample must hold "
                                f"{per} values (flat, or nested as {list(schema.sample_shape)})")
    bad = {type(v).__name__ for v in a.flat if not (v is None or type(v) in (int, float))}
    if bad:
        raise RequestError(422, f"the samples hold values of type {sorted(bad)}; every feature must be a JSON "
                                "number, or null for a missing value")
    shape = a.shape
    if not (shape[1:] == schema.sample_shape or shape[1:] == (per,)):
        got = list(shape[1:]) if len(shape) > 1 else "a scalar"
        raise RequestError(422, f"each sample has shape {got}; this model takes {per} features, flat or "
                                f"nested as {list(schema.sample_shape)}")
    try:
        x = np.array(a.tolist(), dtype=np.float64)
    except OverflowError:
        x = np.full(shape, np.inf)  # an integer beyond any float: reported below as out of range
    return _checked(x.reshape((len(x), *schema.sample_shape)), schema)


def _checked(x: np.ndarray, schema: Schema) -> np.ndarray:
    """float64 rows with NaN for missing values -> float32, after the missing and range checks."""
    missing = np.isnan(x)
    if missing.any() and not schema.missing_ok:
        raise RequestError(422, f"{int(missing.sum())} value(s) are missing (null/NaN) and this model has no "
                                "imputer; send complete samples, or train with imputation.imputer set")
    if (np.abs(x) > F32_MAX).any():  # NaN compares False: missing values pass
        raise RequestError(422, "some values are infinite or beyond the float32 range (|x| > 3.4e38); send "
                                "finite values scaled as the training data was")
    return x.astype(np.float32)
