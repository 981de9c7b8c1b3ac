"""What the trainer needs from the data layer: the training loader, the validation rows of
this rank, and the per-batch preprocessing (labels to indices, imputation, augmentation).

The training loader is ``hpctrain.data.loader.ShardLoader`` (rank partitioning, shuffling,
prefetch, resumable position). Validation rows are read whole-shard with ``iter_arrays`` and
split into contiguous per-rank blocks, so every row is scored exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np

from hpctrain.errors import ConfigError, HpctrainError


@dataclass(slots=True)
class DataInfo:
    sample_shape: tuple[int, ...]
    classes: list[int]
    class_names: list[str] | None
    train_counts: dict[int, int]
    val_rows: int
    targets: int = 0  # regression: float targets per row (0: classification)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def regression(self) -> bool:
        return self.targets > 0

    @property
    def num_outputs(self) -> int:
        """What the model's last layer must output per sample: one logit per class, or the targets."""
        return self.targets if self.targets else len(self.classes)


def load_keys(cfg):
    """Load data.key and checkpoint.encrypt into this process's keyring (each rank reads the
    files itself: only their paths travel in the config). Returns the checkpoint key or None."""
    if cfg.data.key is None and cfg.checkpoint.encrypt is None:
        return None
    from hpctrain.secure import keyring

    if cfg.data.key is not None:
        keyring.add(cfg.data.key)
    return keyring.add(cfg.checkpoint.encrypt) if cfg.checkpoint.encrypt is not None else None


def describe(data_dir: Path, train_split: str, val_split: str | None) -> DataInfo:
    from hpctrain.data.shards import Manifest

    m = Manifest.load(data_dir)
    if m.rows(train_split) == 0:
        raise ConfigError(f"data.train_split: {str(data_dir)!r} has no rows in split {train_split!r}; "
                          f"its splits hold {[(s, m.rows(s)) for s in ('train', 'val')]}")
    val_rows = m.rows(val_split) if val_split else 0
    if val_split and val_rows == 0:
        raise ConfigError(f"data.val_split: {str(data_dir)!r} has no rows in split {val_split!r}; set "
                          "data.val_split=null or re-shard with a validation fraction")
    classes = sorted(int(c) for c in m.schema.classes) or sorted(m.class_counts(train_split))
    if m.schema.regression:
        return DataInfo(sample_shape=tuple(m.schema.sample_shape), classes=[], class_names=None, train_counts={},
                        val_rows=val_rows, targets=m.schema.targets)
    return DataInfo(sample_shape=tuple(m.schema.sample_shape), classes=classes, class_names=m.schema.class_names,
                    train_counts={int(k): int(v) for k, v in m.class_counts(train_split).items()}, val_rows=val_rows)


def make_train_loader(cfg, rank: int, world_size: int, batch_size: int):
    from hpctrain.data.loader import ShardLoader

    # oversample: the loader draws with weights 1/(manifest class count); weighted is done in the loss
    sampling = "oversample" if cfg.imbalance.sampling == "oversample" else "none"
    return ShardLoader(cfg.data.dir, rank=rank, world_size=world_size, batch_size=batch_size,
                       shuffle=cfg.data.shuffle, seed=cfg.run.seed, drop_last=True, prefetch=cfg.data.prefetch,
                       split=cfg.data.train_split, sampling=sampling)


def val_arrays(data_dir, split: str, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's contiguous share of the validation rows (each row on exactly one rank, so
    summed confusion matrices are exact)."""
    from hpctrain.data.shards import iter_arrays

    xs, ys = [], []
    for _, x, y in iter_arrays(data_dir, split=split):
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    bounds = np.linspace(0, len(y), world_size + 1).astype(np.int64)
    lo, hi = bounds[rank], bounds[rank + 1]
    return x[lo:hi], y[lo:hi]


class Preprocess:
    """Per batch, in process: labels to class indices, imputation, augmentation (train only)."""

    def __init__(self, classes: list[int], imputer_path: Path | None, on_nan: str, aug_ops: list[dict],
                 seed: int, rank: int):
        import torch

        # regression (no classes): targets pass through as they are
        self.identity = classes == list(range(len(classes)))
        self.classes = torch.tensor(classes, dtype=torch.int64)
        self.imputer = None
        if imputer_path is not None:
            try:
                from hpctrain.kernels.impute import Imputer
            except ImportError as e:
                raise ConfigError(f"imputation.imputer: the imputation kernels are not installed ({e})") from e
            self.imputer = Imputer.load(imputer_path)
        self.on_nan = on_nan
        self.pipeline = None
        if aug_ops:
            try:
                from hpctrain.kernels.pipeline import build_pipeline
            except ImportError as e:
                raise ConfigError(f"augmentation.ops: the augmentation kernels are not importable ({e}); "
                                  "remove augmentation.ops or reinstall hpctrain (pip install -e .)") from e
            # One stream per rank; its state goes into every checkpoint with the other RNGs.
            self.pipeline = build_pipeline(list(aug_ops), seed=seed + 1000 * rank)

    def labels(self, y):
        if self.identity:
            return y
        idx = torch_searchsorted(self.classes, y)
        return idx

    def features(self, x):
        import torch

        if self.imputer is not None:
            shape = x.shape
            flat = x.reshape(shape[0], -1).numpy()
            x = torch.from_numpy(np.ascontiguousarray(self.imputer.transform(flat), dtype=np.float32)).reshape(shape)
        elif torch.isnan(x).any():
            if self.on_nan == "zero":
                x = torch.where(torch.isnan(x), torch.zeros((), dtype=x.dtype), x)  # NaN only: inf is not missing
            else:
                raise HpctrainError("the training data holds NaN values and no imputer is configured; fit one "
                                    "('hpctrain impute fit') and set imputation.imputer, or set "
                                    "imputation.on_nan=zero")
        if torch.isinf(x).any():
            # an inf is a value, not a missing one: neither imputation nor on_nan touches it, and
            # one makes the loss NaN. 'hpctrain shard' and 'hpctrain profile' name the columns.
            raise HpctrainError(f"the training data holds {int(torch.isinf(x).sum())} infinite value(s) in this "
                                "batch; see which features with 'hpctrain profile DIR', then fix the source data "
                                "(or replace them with NaN and impute) and re-shard")
        return x

    def augment(self, x, y):
        """Training batches only. May turn labels into soft labels (mixup): (N, classes) float."""
        if self.pipeline is None:
            return x, y
        import torch

        ax, ay = self.pipeline(x, y)
        return torch.as_tensor(ax, dtype=torch.float32), torch.as_tensor(ay)

    def state_dict(self) -> dict | None:
        return None if self.pipeline is None else self.pipeline.state_dict()

    def load_state_dict(self, d: dict | None) -> None:
        if self.pipeline is not None and d is not None:
            self.pipeline.load_state_dict(d)


def torch_searchsorted(classes, y):
    import torch

    idx = torch.searchsorted(classes, y)
    bad = (idx >= len(classes)) | (classes[idx.clamp(max=len(classes) - 1)] != y)
    if bad.any():
        raise HpctrainError(f"label {int(y[bad][0])} is not among the manifest's classes {classes.tolist()}; "
                            "the shard directory is inconsistent: re-create it")
    return idx
