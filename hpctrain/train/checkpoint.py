"""Atomic checkpoints in ``<run dir>/checkpoints/``, and finding the newest valid one.

* ``step-XXXXXXXX.pt``: written to a temp file in the same directory, fsynced, renamed; then
  the ``latest`` pointer (a small JSON with the file name and its sha256) is replaced the
  same way. A crash at any instant leaves the previous checkpoint and pointer intact.
* Only tensors, numbers, strings, lists, tuples and dicts go in, so every load uses
  ``torch.load(weights_only=True)``: a checkpoint cannot run code when it is read.
* With ``checkpoint.encrypt: KEYFILE`` the file is the encrypted container of
  :mod:`hpctrain.secure.container` around the same bytes (serialised in memory, never written
  in plaintext); :func:`load` finds the key among the keys this process holds.
* Resume tries the candidates newest first; a truncated or corrupt one is skipped with a
  warning naming it, and the previous one is used.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from hpctrain.errors import HpctrainError
from hpctrain.fileio import atomic_path, atomic_write_json, sha256_file

NAME = re.compile(r"^step-(\d{8,})\.pt$")
LATEST = "latest"


class CheckpointError(HpctrainError):
    """A checkpoint cannot be read or does not fit the run."""


class CheckpointWarning(UserWarning):
    pass


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def _write(dest: Path, payload: dict[str, Any], key) -> None:
    import torch

    # mode from the umask: 0600 under hpctrain train's 077, 0640 with run.group_share
    with atomic_path(dest) as tmp:
        if key is None:
            torch.save(payload, tmp)
            return
        import io

        from hpctrain.secure.container import write_encrypted

        buf = io.BytesIO()
        torch.save(payload, buf)
        with open(tmp, "wb") as out:
            write_encrypted(out, buf.getbuffer(), key, dest.name)


def save(ckpt_dir: Path, step: int, payload: dict[str, Any], *, keep: int = 3, key=None) -> Path:
    """Write ``payload`` as the checkpoint of ``step``, update ``latest``, prune to ``keep``;
    encrypted with ``key`` (a :class:`hpctrain.secure.keys.Key`) when given."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dest = ckpt_dir / step_name(step)
    _write(dest, payload, key)
    atomic_write_json(ckpt_dir / LATEST, {"file": dest.name, "step": step, "sha256": sha256_file(dest)})
    prune(ckpt_dir, keep)
    return dest


def save_file(dest: Path, payload: dict[str, Any], *, key=None) -> None:
    _write(Path(dest), payload, key)


def candidates(ckpt_dir: Path) -> list[Path]:
    """Step checkpoints, newest first (by step number, not mtime: clocks and copies lie)."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune(ckpt_dir: Path, keep: int) -> None:
    for old in candidates(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)


def load(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load one checkpoint safely; any failure is a CheckpointError naming the file."""
    import torch

    from hpctrain.secure.container import is_encrypted
    from hpctrain.secure.keys import check_trusted_location

    check_trusted_location(path, "checkpoint")  # whoever can swap the file chooses the weights we load
    try:
        src = _decrypted(Path(path)) if is_encrypted(path) else path
        obj = torch.load(src, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as e:  # noqa: BLE001 - truncation shows up as zip, pickle or EOF errors alike
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        first = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0])
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable ({first}); it is truncated, corrupt or "
                              "not an hpctrain checkpoint") from e
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no 'model' entry; not an hpctrain checkpoint")
    return obj


def _decrypted(path: Path):
    """The plaintext of an encrypted checkpoint, in memory, with whichever held key opens it;
    every chunk is authenticated before torch sees a byte."""
    import io

    from hpctrain.secure import keyring
    from hpctrain.secure.container import decrypt_file
    from hpctrain.secure.keys import SecurityError

    keys = keyring.held()
    if not keys:
        raise CheckpointError(f"checkpoint {str(path)!r} is encrypted and no key was given; set checkpoint.encrypt: "
                              "KEYFILE in the config (or pass --key KEYFILE)")
    last = None
    for key in keys:
        try:
            return io.BytesIO(decrypt_file(path, key, path.name))
        except SecurityError as e:
            last = e
    raise CheckpointError(str(last)) from None


def _pointer_mismatch(ckpt_dir: Path, path: Path) -> str | None:
    try:
        ptr = json.loads((ckpt_dir / LATEST).read_text())
    except (OSError, ValueError):
        return None
    if ptr.get("file") == path.name and ptr.get("sha256") and ptr["sha256"] != sha256_file(path):
        return "its sha256 differs from the 'latest' pointer"
    return None


def newest_valid(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its payload; None if there is none at all.

    Each skipped file raises a CheckpointWarning naming it and why.
    """
    for path in candidates(ckpt_dir):
        why = _pointer_mismatch(Path(ckpt_dir), path)
        if why is None:
            try:
                return path, load(path)
            except CheckpointError as e:
                why = str(e)
        warnings.warn(f"skipping checkpoint {str(path)!r}: {why}; falling back to the previous one",
                      CheckpointWarning, stacklevel=2)
    return None


def state_mismatch(saved: dict, current: dict, most: int = 3) -> str:
    """'' when the two state dicts have the same keys and shapes, else a short account. Pure."""
    missing = [k for k in current if k not in saved]
    extra = [k for k in saved if k not in current]
    shapes = [f"{k}: {tuple(saved[k].shape)} saved vs {tuple(current[k].shape)} now"
              for k in current if k in saved and tuple(saved[k].shape) != tuple(current[k].shape)]
    parts = []
    for what, items in (("shape", shapes), ("not in the checkpoint", missing), ("only in the checkpoint", extra)):
        if items:
            more = f" and {len(items) - most} more" if len(items) > most else ""
            parts.append(f"{what}: " + "; ".join(items[:most]) + more)
    return " | ".join(parts)
