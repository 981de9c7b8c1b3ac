"""Shard directories in and out for the quality commands (the only module here that touches files
besides the report writer).

Ranks divide shards by stride: shard i (in manifest order, within the split) goes to rank
i % size. Every chunk carries its shard index so results can be merged in manifest order,
which makes them identical for any number of ranks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from hpctrain.quality import QualityError


def load_manifest(path, split: str | None = None, what: str = "shard directory"):
    """The manifest of ``path``; raises a clear error for a missing/malformed one or an empty split."""
    from hpctrain.data.shards import Manifest

    m = Manifest.load(Path(path))
    if m.schema.dtype != "float32":
        raise QualityError(f"{what} {str(path)!r}: features are {m.schema.dtype}, expected numeric float32 "
                           "columns; re-shard with non-numeric columns encoded or dropped")
    if m.rows(split) == 0:
        which = f"split {split!r}" if split else "any split"
        raise QualityError(f"{what} {str(path)!r} has no rows in {which} (shards: {len(m.shards)}); "
                           "pass a shard directory with data, or another --split")
    return m


def check_same_schema(ref, cur) -> None:
    a, b = ref.schema, cur.schema
    if tuple(a.sample_shape) != tuple(b.sample_shape) or list(a.feature_names) != list(b.feature_names):
        only_a = [n for n in a.feature_names if n not in set(b.feature_names)][:5]
        only_b = [n for n in b.feature_names if n not in set(a.feature_names)][:5]
        raise QualityError(
            f"schemas differ: reference {str(ref.root)!r} has sample shape {tuple(a.sample_shape)} and "
            f"{len(a.feature_names)} features, current {str(cur.root)!r} has {tuple(b.sample_shape)} and "
            f"{len(b.feature_names)} (only in reference: {only_a}, only in current: {only_b}); "
            "compare shard sets made from the same columns in the same order")


def local_chunks(m, split: str | None, rank: int = 0, size: int = 1,
                 verify: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(shard index, x as rows x features float32, y int64) for this rank's shards."""
    from hpctrain.data.shards import iter_arrays

    shards = m.shards_for(split)
    for i in range(rank, len(shards), size):
        sub = dataclasses.replace(m, shards=[shards[i]])
        for _info, x, y in iter_arrays(sub, None, verify=verify):
            yield i, x.reshape(len(x), -1), y.astype(np.int64)


def read_all(m, split: str | None, verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``split`` in manifest order, x in its sample shape."""
    xs, ys = [], []
    for _i, x, y in local_chunks(m, split, verify=verify):
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs) if xs else np.zeros((0, m.schema.n_features), dtype=np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
    return x.reshape((len(x),) + tuple(m.schema.sample_shape)), y


def splits_present(m, split: str | None) -> list[str]:
    seen = []
    for s in m.shards_for(split):
        if s.split not in seen:
            seen.append(s.split)
    return seen


def check_out_dir(out_dir, *manifests) -> None:
    """Reports never go inside an input shard directory: the commands do not modify their input.
    Checked before any work, so a bad --out fails in a second, not after the whole pass."""
    import os

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise QualityError(f"--out {str(out_dir)!r} exists and is not a directory; choose a directory path")
    base = Path(out_dir).absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise QualityError(f"--out {str(out_dir)!r} cannot be created: {str(base)!r} is not a writable directory; "
                           "choose another --out")
    out = Path(out_dir).resolve()
    for m in manifests:
        root = Path(m.root).resolve()
        if out == root or root in out.parents:
            raise QualityError(f"--out {str(out_dir)!r} is inside the input shard directory {str(m.root)!r}; "
                               "quality commands never modify their input: choose another directory")


def make_out_dir(out_dir) -> Path:
    """Create the report directory, with a clear error where that is not possible."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QualityError(f"--out {str(out_dir)!r} cannot be created ({e.strerror or e}); choose a writable "
                           "directory") from None
    return out


def writer_for(m, out_dir, *, meta: dict, force: bool = False):
    """A ShardWriter for a new directory with ``m``'s schema; refuses to write into the input."""
    from hpctrain.data.shards import ShardWriter

    check_out_dir(out_dir, m)
    return ShardWriter(Path(out_dir), feature_names=m.schema.feature_names, sample_shape=m.schema.sample_shape,
                       classes=m.schema.classes, class_names=m.schema.class_names,
                       rows_per_shard=int(m.meta.get("rows_per_shard") or 0) or None,
                       compression=m.meta.get("compression", "lzf"), meta=meta, overwrite=force)
