"""The imputer's files: reading a shard directory for a fit, and the statistics JSON.

``hpctrain.kernels.impute.Imputer`` is numerics only; its ``fit(directory)``, ``save`` and
``load`` come here for everything that touches a file. Nothing here imports the kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hpctrain.errors import ImputeError

STATS_NAME = "imputer.json"


def is_shard_input(data: Any) -> bool:
    """True for what ``Imputer.fit`` reads as a shard directory: a path or a Manifest."""
    from hpctrain.data.shards import Manifest

    return isinstance(data, (str, os.PathLike, Manifest))


@dataclasses.dataclass(kw_only=True, slots=True)
class ShardFitInput:
    n_features: int
    source: dict  # recorded in the statistics file: where the fit came from
    chunks: Callable[[], Iterator[np.ndarray]]  # this rank's share, 2-D float32 arrays
    sum_count: tuple[np.ndarray, np.ndarray, int] | None  # the manifest's sums, counts and rows, when asked


def shard_fit_input(where: Any, *, split: str | None, rank: int, size: int, from_manifest: bool) -> ShardFitInput:
    """What a fit on shard directory ``where`` reads; the ranks share its shards round-robin.
    With ``from_manifest`` the column sums and counts come from the manifest (no data read)."""
    from hpctrain.data.shards import Manifest, iter_arrays

    m = Manifest.load(where)
    shards = m.shards_for(split)
    if not shards:
        raise ImputeError(f"shard directory {str(m.root)!r} has no {split!r} shards; fit on split=None (all) "
                          "or another split")
    # the feature names let 'impute apply' refuse statistics of another dataset of the same width
    source = {"kind": "shards", "dir": str(m.root), "split": split, "rows": m.rows(split),
              "feature_names": list(m.schema.feature_names)}
    sum_count = None
    if from_manifest:
        st = m.column_stats(split)
        if np.any(st.inf_count > 0):
            bad = np.flatnonzero(st.inf_count > 0)[:5].tolist()
            raise ImputeError(f"{str(m.root)!r}: column(s) {bad} hold infinite values; only NaN marks a missing "
                              "value: clean the data first (e.g. 'hpctrain clean')")
        sum_count = (st.sum, st.count.astype(np.int64), m.rows(split))
    local = dataclasses.replace(m, shards=shards[rank::size])

    def chunks() -> Iterator[np.ndarray]:
        for _, x, _ in iter_arrays(local, split):
            yield np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)

    return ShardFitInput(n_features=m.schema.n_features, source=source, chunks=chunks, sum_count=sum_count)


def stats_path(path: str | os.PathLike) -> Path:
    """The statistics file for ``path``: itself, or ``imputer.json`` in a shard directory."""
    p = Path(path)
    return p / STATS_NAME if p.is_dir() else p


def write_stats(path: str | os.PathLike, doc: dict, *, rank: int = 0) -> Path:
    """Write the statistics JSON atomically (rank 0 only); returns the file's path."""
    from hpctrain.fileio import atomic_write_json

    p = stats_path(path)
    if rank == 0:
        atomic_write_json(p, doc)
    return p


def read_stats(path: str | os.PathLike) -> tuple[Any, str]:
    """(the parsed JSON, a printable name of the file) of statistics written by :func:`write_stats`."""
    p = stats_path(path)
    if not p.is_file():
        raise ImputeError(f"imputer statistics {str(p)!r} do not exist; create them with "
                          f"'hpctrain impute fit {p.parent}' (or Imputer.fit(...).save(...))")
    try:
        return json.loads(p.read_text(encoding="utf-8")), repr(str(p))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImputeError(f"{str(p)!r} is not valid JSON ({e}); re-run 'hpctrain impute fit'") from None
