"""Reading whole shards: checksums, dataset checks, row reads, iteration and verify."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hpctrain.data.format import (
    ShardError,
)
from hpctrain.data.h5io import open_shard
from hpctrain.data.manifest import Manifest, ShardInfo
from hpctrain.errors import HpctrainError
from hpctrain.fileio import sha256_file


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
    except ShardError:
        raise
    except HpctrainError as e:  # a decryption failure raised by the encrypted file under h5py
        raise ShardError(str(e)) from None
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
        with open_shard(m, s, locking=locking) as f:
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
    # the sha256 is over the ciphertext: checkable without the key, the contents are not
    can_open = m.encryption is None or _have_key(m)
    for s in m.shards:
        path = m.path(s)
        if not path.is_file():
            problems.append(f"{s.file}: missing (the manifest names it, the directory lacks it)")
            continue
        try:
            check_sha256(m, s)
            if not can_open:
                continue
            with open_shard(m, s, locking=locking) as f:
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


def _have_key(m: Manifest) -> bool:
    from hpctrain.secure import keyring

    return any(k.key_id == m.encryption.get("key_id") for k in keyring.held())
