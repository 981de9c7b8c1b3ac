"""The shard directory format: names, version, the keys a manifest may hold, and ShardError."""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from hpctrain.errors import HpctrainError

FORMAT = "hpctrain-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Files other commands keep beside the manifest (hpctrain impute fit writes imputer.json).
DERIVED_NAMES = frozenset({"imputer.json"})
SPLITS = ("train", "val")
CHUNK_BYTES = 1 << 20
# Default shard size ceiling: big enough that per-file overhead is negligible, small enough
# that one shard (the writer's memory bound) fits comfortably in RAM.
DEFAULT_SHARD_BYTES = 32 << 20
_SHARD_NAME = re.compile(r"^(train|val)-\d{5,}\.h5$")
# The keys of format version 1. A format that adds keys bumps FORMAT_VERSION (which older
# hpctrain refuses with "upgrade hpctrain"), so within version 1 an unknown key is a hand edit
# or a typo and is refused rather than ignored: ignoring "shard" for "shards" hides a mistake.
MANIFEST_KEYS = ("format", "version", "schema", "meta", "shards")
SCHEMA_KEYS = ("dtype", "sample_shape", "feature_names", "classes", "class_names", "targets")
SHARD_KEYS = ("file", "rows", "sha256", "split", "class_counts", "stats")
STATS_KEYS = ("count", "nan_count", "inf_count", "sum", "sumsq", "min", "max")
COMPRESSIONS = ("none", "lzf", "gzip")
# A manifest is read whole: a crafted multi-GB one must not exhaust a login node's memory. Real
# ones hold a few hundred bytes of statistics per feature and shard (10,000 features x 1,000
# shards is about 100 MB), far below this.
MAX_MANIFEST_BYTES = 512 << 20


class ShardError(HpctrainError):
    """A shard directory, manifest, shard file or shard input is wrong or corrupt."""


def _is_int(v: Any) -> bool:
    # JSON true/false load as bool, a subclass of int; a count of True is a broken manifest
    return isinstance(v, int) and not isinstance(v, bool)


def _check_keys(d: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """Refuse keys of ``d`` outside ``known``, naming the first one and the closest known key."""
    for k in d:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ShardError(f"{where}: unknown key {k!r}{hint}; format version {FORMAT_VERSION} has only "
                             f"{', '.join(known)}: remove or rename the key, or re-create the shard directory")


def _bad_field(where: str, name: str, value: Any, expected: str) -> ShardError:
    return ShardError(f"{where}: {name} is {type(value).__name__} {value!r:.60}; expected {expected}. The manifest "
                      "was edited or is corrupt: fix the field or re-create the shard directory")


def chunk_rows_for(sample_shape: Sequence[int]) -> int:
    """Rows per HDF5 chunk so one chunk is about 1 MiB of float32."""
    row_bytes = 4 * max(1, int(np.prod(sample_shape)) if len(sample_shape) else 1)
    return max(1, CHUNK_BYTES // row_bytes)
