"""The manifest of a shard directory: schema, shard entries, loading and validation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hpctrain.data.colstats import ColumnStats
from hpctrain.data.format import (
    chunk_rows_for,
    COMPRESSIONS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_KEYS,
    MAX_MANIFEST_BYTES,
    MANIFEST_NAME,
    SCHEMA_KEYS,
    SHARD_KEYS,
    SPLITS,
    STATS_KEYS,
    ShardError,
    _bad_field,
    _check_keys,
    _is_int,
)
from hpctrain.fileio import atomic_write_json


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
    enc = meta.get("encryption")
    if enc is not None and not (isinstance(enc, dict) and enc.get("cipher") == "AES-256-GCM"
                                and isinstance(enc.get("key_id"), str) and enc.get("container") == 1):
        raise _bad_field(where, "encryption", enc, "an object with cipher 'AES-256-GCM', container 1 and the "
                         "key_id (written by 'hpctrain shard --encrypt')")
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
    def encryption(self) -> dict | None:
        """meta.encryption of an encrypted shard directory (cipher, key id), else None."""
        return self.meta.get("encryption") or None

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
            size = mpath.stat().st_size
        except OSError as e:
            raise ShardError(f"{str(mpath)!r} cannot be read ({e.strerror})") from None
        if size > MAX_MANIFEST_BYTES:
            raise ShardError(f"{str(mpath)!r} is {size} bytes, over the {MAX_MANIFEST_BYTES >> 20} MiB a manifest may "
                             "have; it is not one 'hpctrain shard' wrote: re-create the shard directory")
        try:
            d = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardError(f"{str(mpath)!r} is not valid JSON ({e}); re-create the shard directory") from None
        except RecursionError:  # "[[[[..." nested beyond the parser's stack
            raise ShardError(f"{str(mpath)!r} is nested too deeply to be a manifest; re-create the shard "
                             "directory") from None
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
