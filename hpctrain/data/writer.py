"""Writing a shard directory: shards of full chunks, the manifest written last."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hpctrain.data.colstats import ColumnStats
from hpctrain.data.format import (
    chunk_rows_for,
    _SHARD_NAME,
    DEFAULT_SHARD_BYTES,
    DERIVED_NAMES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPLITS,
    ShardError,
)
from hpctrain.data.h5io import h5_open
from hpctrain.data.manifest import Manifest, Schema, ShardInfo
from hpctrain.fileio import atomic_path, sha256_file


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
                 overwrite: bool = False, locking: bool | None = None, targets: int = 0, key=None) -> None:
        self.root = Path(out_dir)
        # key (hpctrain.secure.keys.Key): each shard is built in memory and only its ciphertext is written
        self.key = key
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
        """Write one shard file atomically; returns its sha256 (of the ciphertext when encrypted)."""
        if self.key is None:
            with atomic_path(dest) as tmp:
                with h5_open(tmp, "w", locking=self.locking) as f:
                    self._fill(f, split, x, y)
                return sha256_file(tmp)
        import io

        import h5py

        from hpctrain.secure.container import write_encrypted

        # The plaintext HDF5 image lives only in memory (one shard: the writer's bound anyway)
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            self._fill(f, split, x, y)
        with atomic_path(dest) as tmp:  # ciphertext: readable like any shard
            with open(tmp, "wb") as out:
                write_encrypted(out, buf.getbuffer(), self.key, dest.name)
            del buf
            return sha256_file(tmp)

    def _fill(self, f, split: str, x: np.ndarray, y: np.ndarray) -> None:
        chunk = min(self.chunk_rows, len(x))
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
        if self.key is not None:
            from hpctrain.secure.container import DEFAULT_CHUNK_BYTES

            # the key's one-way id, never the key: readers find the right key by it
            meta["encryption"] = {"cipher": "AES-256-GCM", "container": 1, "chunk_bytes": DEFAULT_CHUNK_BYTES,
                                  "key_id": self.key.key_id}
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
