"""What is explained: the rows of a split (read from the shards), the baseline from the
manifest's statistics, the sample choice, and the split of work over ranks.

The work is cut into fixed chunks of rows that do not depend on the number of ranks, and each
rank takes whole chunks: a chunk's forward passes are then the same on 1 rank and on N, so the
gathered numbers are the same too (a batch of another size can round differently).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpctrain.explain import ExplainError

SAMPLE_CHUNK = 8     # explained samples per chunk (IG runs steps x chunk forward passes at once)
ROW_CHUNK = 256      # rows per chunk of permutation importance


@dataclass(slots=True)
class SplitRows:
    """One split of a shard directory in memory: model inputs after the run's preprocessing."""

    shards: Path
    split: str
    x: np.ndarray               # (N, *sample_shape) float32, imputed as in training
    y: np.ndarray               # (N,) class indices into the model's classes; regression: the targets
    labels: np.ndarray          # (N,) class ids as in the shards; regression: the targets, (N,) or (N, k)
    shard_file: np.ndarray      # (N,) shard file name of each row
    shard_row: np.ndarray       # (N,) row index in its shard
    feature_names: list[str]
    class_names: list[str] | None
    baseline_mean: np.ndarray   # (*sample_shape) float32: training feature means (NaN-free)
    baseline_source: str        # which split the means come from


def shard_dir(trained, shards: Path | None) -> Path:
    """``shards`` or the run's own data.dir; an error names --shards when neither can be read."""
    if shards is not None:
        return Path(shards)
    d = getattr(getattr(trained.config, "data", None), "dir", None)
    if d is None:
        raise ExplainError(f"{str(trained.run_dir)!r} names no shard directory (data.dir); pass --shards DIR")
    return Path(d)


def feature_means(stats, shape: tuple[int, ...]) -> np.ndarray:
    """Per-feature mean of the finite values; a column without one gets 0 (there is nothing to average)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = stats.sum / stats.count
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return mean.astype(np.float32).reshape(shape)


def load_split(trained, shards: Path, split: str) -> SplitRows:
    from hpctrain.data.format import ShardError
    from hpctrain.data.shards import Manifest, iter_arrays

    try:
        m = Manifest.load(shards)
    except ShardError as e:
        raise ExplainError(f"--shards: {e}") from None
    if tuple(m.schema.sample_shape) != tuple(trained.sample_shape):
        raise ExplainError(f"shards {str(shards)!r} have sample shape {tuple(m.schema.sample_shape)}; the model was "
                           f"trained on {tuple(trained.sample_shape)}; pass --shards made from the same columns")
    if m.schema.targets != trained.targets:
        raise ExplainError(f"shards {str(shards)!r} hold {m.schema.targets or 'no'} regression target(s), the model "
                           f"was trained on {trained.targets or 'class labels'}; pass --shards of the same task")
    if m.rows(split) == 0:
        other = "train" if split == "val" else "val"
        raise ExplainError(f"shards {str(shards)!r} have no rows in split {split!r}; pass --split {other} (or "
                           "re-shard with a validation fraction)")
    xs, ys, files, rows = [], [], [], []
    for info, x, y in iter_arrays(m, split):
        xs.append(x)
        ys.append(y)
        files.append(np.full(len(y), info.file))
        rows.append(np.arange(len(y), dtype=np.int64))
    x = np.concatenate(xs).astype(np.float32, copy=False)
    if trained.regression:
        labels = np.concatenate(ys).astype(np.float64)
        y = labels
    else:
        labels = np.concatenate(ys).astype(np.int64)
        unknown = sorted(set(np.unique(labels).tolist()) - set(trained.classes))
        if unknown:
            raise ExplainError(f"shards {str(shards)!r} hold class ids {unknown[:10]} the model was not trained on "
                               f"(its classes: {trained.classes}); pass shards of the same task")
        y = np.searchsorted(np.asarray(trained.classes, dtype=np.int64), labels)
    import torch

    x = trained.preprocess.features(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    source = "train" if m.rows("train") else split
    mean = feature_means(m.column_stats(source), tuple(trained.sample_shape))
    names = list(m.schema.feature_names) or [f"f{i}" for i in range(m.schema.n_features)]
    return SplitRows(Path(shards), split, x, y, labels, np.concatenate(files), np.concatenate(rows), names,
                     list(m.schema.class_names) if m.schema.class_names else None, mean, source)


def choose_samples(n_rows: int, k: int, seed: int) -> np.ndarray:
    """``min(k, n_rows)`` distinct row indices, sorted; the same for every rank and rank count."""
    k = min(k, n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=k, replace=False))


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of at most ``size`` covering ``range(n)``."""
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def mine(items: list, rank: int, size: int) -> list[tuple[int, object]]:
    """The (index, item) pairs this rank takes: every size-th, starting at its rank."""
    return [(i, it) for i, it in enumerate(items) if i % size == rank]
