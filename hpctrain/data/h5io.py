"""Opening HDF5 shard files: hpctrain's file-locking default and failures as ShardError."""

from __future__ import annotations

import os
import re
from typing import Any

from hpctrain.data.format import ShardError

LOCKING_ENV = "HDF5_USE_FILE_LOCKING"


def default_file_locking() -> None:
    """Turn HDF5 file locking off for this process unless the user chose a setting.

    Lustre, GPFS and NFS often reject the ``flock``/``fcntl`` locks HDF5 >= 1.10 takes on
    open, and readers never need them. HDF5 reads the variable once, when its file layer
    first initialises, so this runs before any ``h5py.File`` call in hpctrain. An explicit
    ``HDF5_USE_FILE_LOCKING`` in the environment (TRUE, FALSE or BEST_EFFORT) wins.
    """
    os.environ.setdefault(LOCKING_ENV, "FALSE")


def h5_open(path: str | os.PathLike, mode: str = "r", *, locking: bool | None = None, **h5_kwargs: Any):
    """Open an HDF5 file with hpctrain's locking default, mapping failures to ShardError.

    ``locking=None`` follows the environment (default off, see :func:`default_file_locking`);
    True/False ask HDF5 for that per file (the environment variable still overrides it).
    """
    if not locking:
        default_file_locking()
    import h5py

    kwargs: dict[str, Any] = dict(h5_kwargs)
    if locking is not None:
        kwargs["locking"] = locking
    elif os.environ.get(LOCKING_ENV, "").upper() in ("FALSE", "0"):
        kwargs["locking"] = False
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise ShardError(f"shard file {str(path)!r} does not exist; re-create the shard directory "
                         "with 'hpctrain shard' or fix the manifest") from None
    except OSError as e:
        if re.search(r"\block", str(e), re.IGNORECASE):  # not "sblock" (superblock) in a truncation error
            raise ShardError(f"shard file {str(path)!r}: HDF5 could not lock it ({e}); another process holds it "
                             f"open for writing, or the file system rejects locks: unset {LOCKING_ENV} or set it "
                             "to FALSE (hpctrain's default) for read-only access") from e
        raise ShardError(f"shard file {str(path)!r} cannot be opened as HDF5 ({e}); it is truncated or "
                         "corrupt: re-create it with 'hpctrain shard' (check with 'hpctrain shard verify')"
                         ) from e


def open_shard(m, s, *, locking: bool | None = None, **h5_kwargs: Any):
    """Open shard ``s`` of manifest ``m`` read-only; an encrypted one (manifest meta.encryption)
    is decrypted as HDF5 reads it, chunk by chunk, through
    :class:`hpctrain.secure.container.EncryptedFile`: memory stays at a few chunks per open
    file and no plaintext is written anywhere."""
    return open_shard_source(m, s, locking=locking, **h5_kwargs)[0]


def open_shard_source(m, s, *, locking: bool | None = None, **h5_kwargs: Any):
    """``(h5py file, EncryptedFile or None)``: :func:`open_shard`, also handing out the
    decrypting file object under an encrypted shard, for readers that bypass HDF5's driver
    (:mod:`hpctrain.data.direct_read`)."""
    enc = m.meta.get("encryption")
    if not enc:
        return h5_open(m.path(s), "r", locking=locking, **h5_kwargs), None
    from hpctrain.secure import keyring
    from hpctrain.secure.container import EncryptedFile
    from hpctrain.secure.keys import SecurityError

    path = m.path(s)
    try:
        key = keyring.get(enc["key_id"], f"shard directory {str(m.root)!r}")
        src = EncryptedFile(path, key, s.file)
    except SecurityError as e:
        raise ShardError(str(e)) from None
    import h5py

    try:
        # the file object, not a path: HDF5's own locking does not apply to it
        return h5py.File(src, "r", **h5_kwargs), src
    except Exception as e:  # noqa: BLE001  h5py may wrap the reader's error in its own
        why = src.failure or e
        src.close()
        raise ShardError(str(why) if src.failure else
                         f"shard file {str(path)!r} decrypts but is not valid HDF5 ({e}); re-create it") from None
