"""Atomic files and checksums, shared by shards, manifests, checkpoints and journals.

A crash (or a preemption) at any instant leaves either the old file or the new one,
never a torn one: write a temp file in the same directory, fsync it, ``os.replace`` it,
then fsync the directory so the rename itself survives a node crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and /proc-like mounts) refuse directory fsync
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path next to ``dest``; on clean exit it replaces ``dest`` atomically.

    The caller writes the temp path by any means (h5py, torch.save, ...). On an exception
    the temp file is removed and ``dest`` is untouched. The file gets ``mode``
    (default 0644) less the umask: 0644 under the usual 022, 0600 under the 077 that
    ``hpctrain train`` and ``submit`` set (see :mod:`hpctrain.secure.perms`).
    """
    from hpctrain.secure.perms import current_umask

    mode = (0o644 if mode is None else mode) & ~current_umask()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(dest, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"), mode)


def atomic_write_json(dest: str | os.PathLike, obj: Any, mode: int | None = None) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", mode)


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def append_jsonl(path: str | os.PathLike, record: dict, fsync: bool = True) -> None:
    """Append one JSON line durably (used by journals and metrics logs)."""
    line = json.dumps(record, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # created under the umask, like any new file
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
