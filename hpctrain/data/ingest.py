"""From an input spec to a shard directory: choosing the reader, splitting rows into
train/val, checking free space and writing the shards."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from hpctrain.data.builtin_sources import check_seed, sklearn_source, synthetic_source
from hpctrain.data.cells import (
    _human,
    Chunk,
    Source,
)
from hpctrain.data.file_sources import csv_source, npy_source, npz_source, parquet_source
from hpctrain.data.shards import Manifest, ShardError, ShardWriter, default_rows_per_shard


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
                 shuffle: bool = True, overwrite: bool = False, task: str = "classification", encrypt=None,
                 masks=(), mask_key=None) -> Manifest:
    """Convert input ``spec`` to a shard directory ``out`` in bounded memory; returns its manifest.

    ``encrypt``: a :class:`hpctrain.secure.keys.Key`; the shards are written AES-256-GCM encrypted.
    ``masks``: :class:`hpctrain.secure.mask.MaskSpec` items applied to every chunk before it is
    written (``mask_key`` keys the ``hash`` method)."""
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
    feature_names, sample_shape, mask = src.feature_names, src.sample_shape, None
    if masks:
        from hpctrain.secure.mask import Masker

        mask = Masker(masks, src.feature_names, src.sample_shape, mask_key)
        feature_names, sample_shape = mask.feature_names, mask.sample_shape
        meta["masking"] = mask.record()
    writer = ShardWriter(out, feature_names=feature_names, sample_shape=sample_shape,
                         rows_per_shard=rows_per_shard, compression=compression, classes=src.classes, meta=meta,
                         shuffle_seed=seed if shuffle else None, overwrite=overwrite, targets=src.targets,
                         key=encrypt)
    with writer:
        chunks = src.chunks()
        if shuffle and src.in_memory:
            chunks = _shuffled(chunks, seed)
        for x, y in chunks:
            if mask is not None:
                x = mask(x)
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
