"""Masking sensitive feature columns while sharding (``hpctrain shard --mask COL:METHOD``).

* ``hash``: keyed pseudonymisation. Each value becomes HMAC-SHA256(subkey, value) cut to 24 bits,
  an integer a float32 shard holds exactly. The same value and key give the same pseudonym in
  every run and every table (joins stay possible); without the key the values cannot be
  recovered or guessed by hashing candidates. 24 bits is what float32 carries: distinct values
  start to collide after a few thousand (birthday bound), so it suits category-like columns, not
  unique ids of millions of rows. Missing values (NaN) stay missing.
* ``drop``: the column is removed (tables only: a sample shape of one dimension).
* ``redact``: every value becomes 0.

The manifest records which columns were masked and how (and the key id for ``hash``), never
values. Masking happens before anything is written, so no unmasked value reaches a shard.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hpctrain.errors import HpctrainError

METHODS = ("hash", "drop", "redact")
HASH_BITS = 24


class MaskError(HpctrainError):
    """A --mask specification does not fit the input."""


@dataclass(frozen=True, slots=True)
class MaskSpec:
    column: str
    method: str


def parse_mask(text: str) -> MaskSpec:
    col, sep, method = text.rpartition(":")
    if not sep or not col or method not in METHODS:
        raise MaskError(f"--mask {text!r}: expected COLUMN:METHOD with METHOD one of {', '.join(METHODS)}, "
                        "e.g. --mask patient_id:hash")
    return MaskSpec(col, method)


def pseudonyms(values: np.ndarray, subkey: bytes) -> np.ndarray:
    """The 24-bit keyed pseudonym of each float32 value, as float32; NaN stays NaN."""
    v = np.asarray(values, dtype=np.float32)
    out = np.full(v.shape, np.nan, dtype=np.float32)
    ok = ~np.isnan(v)
    if not ok.any():
        return out
    vals = v[ok] + np.float32(0.0)  # -0.0 and 0.0 are one value
    uniq, inv = np.unique(vals, return_inverse=True)
    codes = np.empty(len(uniq), dtype=np.float32)
    for i, u in enumerate(uniq):
        d = hmac.new(subkey, u.tobytes(), hashlib.sha256).digest()
        codes[i] = int.from_bytes(d[:4], "big") >> (32 - HASH_BITS)
    out[ok] = codes[inv]
    return out


class Masker:
    """Applies the masks to chunks of rows of a table with ``feature_names``."""

    def __init__(self, specs: Sequence[MaskSpec], feature_names: Sequence[str], sample_shape: Sequence[int],
                 key=None) -> None:
        names = list(feature_names)
        seen: set[str] = set()
        self.specs = list(specs)
        for s in self.specs:
            if s.column not in names:
                raise MaskError(f"--mask {s.column}:{s.method}: the input has no feature column {s.column!r} (it has "
                                f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}); the label column "
                                "cannot be masked")
            if s.column in seen:
                raise MaskError(f"--mask names column {s.column!r} twice; give one method per column")
            seen.add(s.column)
        if any(s.method == "drop" for s in self.specs) and len(sample_shape) != 1:
            raise MaskError(f"--mask ...:drop removes a column of a table; this input has samples of shape "
                            f"{tuple(sample_shape)}: use redact")
        if any(s.method == "hash" for s in self.specs) and key is None:
            raise MaskError("--mask COLUMN:hash needs a key: pass --mask-key KEYFILE ('hpctrain keygen KEYFILE'); "
                            "the same key gives the same pseudonyms in every run")
        self.key = key
        self._subkey = key.derive("mask") if key is not None else b""
        self.index = {s.column: names.index(s.column) for s in self.specs}
        dropped = {self.index[s.column] for s in self.specs if s.method == "drop"}
        self.keep = [i for i in range(len(names)) if i not in dropped]
        self.feature_names = [names[i] for i in self.keep]
        self.sample_shape = (len(self.keep),) if dropped else tuple(sample_shape)
        if not self.keep:
            raise MaskError("--mask drops every feature column; keep at least one")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = np.array(x, dtype=np.float32).reshape(len(x), -1)  # a copy: the input stays untouched
        for s in self.specs:
            j = self.index[s.column]
            if s.method == "hash":
                flat[:, j] = pseudonyms(flat[:, j], self._subkey)
            elif s.method == "redact":
                flat[:, j] = 0.0
        if len(self.keep) != flat.shape[1]:
            flat = flat[:, self.keep]
        return flat.reshape(len(x), *self.sample_shape)

    def record(self) -> list[dict]:
        """What the manifest keeps: column and method (and the key id for hash), no values."""
        out = []
        for s in self.specs:
            d = {"column": s.column, "method": s.method}
            if s.method == "hash":
                d["key_id"] = self.key.key_id
                d["bits"] = HASH_BITS
            out.append(d)
        return out
