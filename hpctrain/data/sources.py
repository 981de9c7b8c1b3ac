"""Input readers for ``hpctrain shard``: each yields bounded chunks of (x float32, y int64),
or y float32 targets with ``task="regression"`` (``hpctrain shard --task regression``).

Supported inputs (see docs/data.md):

- ``*.csv`` / ``*.tsv`` (header required), streamed with the csv module;
- ``*.npy`` (2-D, label column chosen by ``--label``, memory-mapped) and ``*.npz`` (``x``, ``y``);
- ``*.parquet`` through pyarrow, streamed by record batch;
- ``sklearn:digits|breast_cancer|wine|iris`` (shipped with scikit-learn, no download), and
  ``sklearn:diabetes`` (float targets: regression only);
- ``synthetic:classification?rows=&features=&classes=&imbalance=&missing=&seed=&shape=``;
- ``synthetic:regression?rows=&features=&targets=&noise=&seed=`` (regression only).

Built-in specs accept ``?missing=F&imbalance=R&seed=S`` to inject missing values (each
feature value NaN with probability F) and class imbalance (class k of C kept with
probability R**(-k/(C-1)), so the last class is R times rarer than the first).

Memory is bounded by a chunk for the streamed formats; npz and sklearn inputs are in memory.

The code lives in one module per idea and every name stays importable from here:
``cells`` (Source, chunk bounds, parsing text cells and labels), ``file_sources`` (CSV/TSV,
NumPy, Parquet), ``builtin_sources`` (sklearn and synthetic datasets) and ``ingest``
(open_source, splitting, space checks, write_shards).
"""

from __future__ import annotations

from hpctrain.data.cells import (
    CHUNK_CELLS, Chunk, INF_TOKENS, LABEL_GUESSES, LabelParser, MISSING_TOKENS, Source, strings_to_float,
    to_float32,
)
from hpctrain.data.file_sources import (
    NPY_MAGIC, ZIP_MAGIC, csv_source, npy_source, npz_source, parquet_source,
)
from hpctrain.data.builtin_sources import (
    COMMON_PARAMS, SEED_LIMIT, SKLEARN, SKLEARN_PARAMS, SYNTH_MAX_CENTER_VALUES, SYNTH_MAX_CLASSES,
    SYNTH_MAX_FEATURES, SYNTH_MAX_ROWS, SYNTH_PARAMS, check_seed, class_keep_probs, inject, sklearn_source,
    synthetic_source,
)
from hpctrain.data.ingest import (
    SplitAssigner, check_space, free_bytes, open_source, shard_bytes, write_shards,
)

__all__ = [
    "CHUNK_CELLS", "COMMON_PARAMS", "Chunk", "INF_TOKENS", "LABEL_GUESSES", "LabelParser", "MISSING_TOKENS",
    "NPY_MAGIC", "SEED_LIMIT", "SKLEARN", "SKLEARN_PARAMS", "SYNTH_MAX_CENTER_VALUES", "SYNTH_MAX_CLASSES",
    "SYNTH_MAX_FEATURES", "SYNTH_MAX_ROWS", "SYNTH_PARAMS", "Source", "SplitAssigner", "ZIP_MAGIC",
    "check_seed", "check_space", "class_keep_probs", "csv_source", "free_bytes", "inject", "npy_source",
    "npz_source", "open_source", "parquet_source", "shard_bytes", "sklearn_source", "strings_to_float",
    "synthetic_source", "to_float32", "write_shards",
]
