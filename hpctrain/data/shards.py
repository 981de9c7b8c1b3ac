"""HDF5 shards: the on-disk format, the manifest, the writer and whole-shard readers.

A shard directory holds ``<split>-NNNNN.h5`` files and a ``manifest.json`` written last,
atomically. A directory without a manifest is, by definition, not a shard directory: a
crash while writing leaves no manifest, and readers refuse it.

Each shard file holds ``x`` (float32, N x sample_shape) and ``y`` (int64 class ids, N; or
float32 regression targets, N or N x k when the schema's ``targets`` is k > 0), chunked in
about 1 MiB row blocks (the loader reads whole chunks), with fletcher32 on every chunk.

Column statistics (see :class:`ColumnStats`) are mergeable, so profiling and imputation can
work from the manifest alone without touching the data.

h5py is imported inside functions so ``import hpctrain.data`` stays cheap.

The code lives in one module per idea; this module keeps every name importable from here:
``format`` (names, version, manifest keys, ShardError), ``h5io`` (opening files, locking),
``colstats`` (ColumnStats), ``manifest`` (Schema, ShardInfo, Manifest), ``readers``
(checksums, row reads, iter_arrays, verify) and ``writer`` (ShardWriter).
"""

from __future__ import annotations

from hpctrain.data.colstats import ColumnStats
from hpctrain.data.format import (
    CHUNK_BYTES,
    COMPRESSIONS,
    DEFAULT_SHARD_BYTES,
    DERIVED_NAMES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_KEYS,
    MANIFEST_NAME,
    SCHEMA_KEYS,
    SHARD_KEYS,
    SPLITS,
    STATS_KEYS,
    ShardError,
    chunk_rows_for,
)
from hpctrain.data.h5io import LOCKING_ENV, default_file_locking, h5_open
from hpctrain.data.manifest import Manifest, Schema, ShardInfo
from hpctrain.data.readers import check_datasets, check_sha256, iter_arrays, read_rows, verify
from hpctrain.data.writer import ShardWriter, default_rows_per_shard

__all__ = [
    "CHUNK_BYTES", "COMPRESSIONS", "DEFAULT_SHARD_BYTES", "DERIVED_NAMES", "FORMAT", "FORMAT_VERSION", "LOCKING_ENV",
    "MANIFEST_KEYS", "MANIFEST_NAME", "SCHEMA_KEYS", "SHARD_KEYS", "SPLITS", "STATS_KEYS", "ColumnStats", "Manifest",
    "Schema", "ShardError", "ShardInfo", "ShardWriter", "check_datasets", "check_sha256", "chunk_rows_for",
    "default_file_locking", "default_rows_per_shard", "h5_open", "iter_arrays", "read_rows", "verify",
]
