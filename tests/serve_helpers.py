"""A tiny finished training run for the export, serve and compress tests: tabular rows with
missing values (so the imputer travels with the model) and class ids that are not 0..k-1."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def train_tiny_run(root: Path, *, kind: str = "mlp", epochs: int = 2, seed: int = 1, model: dict | None = None) -> Path:
    import torch

    from hpctrain.data.shards import ShardWriter
    from hpctrain.kernels.impute import Imputer
    from hpctrain.train.config import load_config
    from hpctrain.train.trainer import train

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    classes = [2, 5, 9]
    shape = (4,) if kind == "mlp" else (1, 4, 4)
    per = int(np.prod(shape))
    centers = rng.normal(0, 3, size=(3, per))
    data = root / "data"
    with ShardWriter(data, feature_names=[f"f{i}" for i in range(per)], sample_shape=shape,
                     rows_per_shard=50, classes=classes, class_names=["two", "five", "nine"]) as w:
        for split, n in (("train", 200), ("val", 60)):
            idx = rng.integers(0, 3, n)
            x = (centers[idx] + rng.normal(0, 1.0, size=(n, per))).astype(np.float32)
            x[rng.random(x.shape) < 0.05] = np.nan
            w.add(x.reshape((n, *shape)), np.asarray(classes)[idx], split=split)
    Imputer("mean").fit(data).save(data)
    model = model or ({"kind": "mlp", "hidden": [8]} if kind == "mlp" else {"kind": "cnn", "channels": [4, 8]})
    cfg = load_config({
        "run": {"name": "t", "dir": str(root / "run"), "epochs": epochs, "seed": seed},
        "data": {"dir": str(data), "batch_size": 16, "prefetch": 0},
        "model": model,
        "optimizer": {"name": "adamw", "lr": 0.01},
        "imputation": {"imputer": str(data / "imputer.json")},
        "logging": {"plots": False, "progress": False},
        "comm": {"backend": "mpi"},
    })
    assert train(cfg).status == "completed"
    return root / "run"


def val_rows(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from hpctrain.data.shards import iter_arrays

    xs, ys = zip(*[(x, y) for _, x, y in iter_arrays(root / "data", "val")])
    return np.concatenate(xs), np.concatenate(ys)
