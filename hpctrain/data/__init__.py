"""Data: HDF5 shards (format, manifest, writer), the rank-partitioned loader and input readers.

Names are re-exported lazily so ``import hpctrain.data`` does not import h5py or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ShardError": "shards", "Manifest": "shards", "Schema": "shards", "ShardInfo": "shards",
    "ColumnStats": "shards", "ShardWriter": "shards", "iter_arrays": "shards", "verify": "shards",
    "MANIFEST_NAME": "shards", "FORMAT_VERSION": "shards",
    "ShardLoader": "loader", "plan_epoch": "loader",
    "open_source": "sources", "Source": "sources", "write_shards": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'hpctrain.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hpctrain.data.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
