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
