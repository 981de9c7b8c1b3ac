"""A trained model in memory (:class:`TrainedRun`) and its loading from a run directory.

This is the bottom layer that both prediction (``hpctrain.predict``) and the model artifact
(``hpctrain.serve``) build on; it imports neither, so they can import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.errors import HpctrainError
from hpctrain.rundir import ResultError, RunDir


class PredictError(HpctrainError):
    """A run directory or an input cannot be used for prediction."""


@dataclass(slots=True)
class TrainedRun:
    """A trained model ready for inference (eval mode, CPU)."""

    run_dir: Path
    checkpoint: Path
    result: dict
    config: Any  # hpctrain.train.config.TrainConfig
    classes: list[int]
    sample_shape: tuple[int, ...]
    model: Any  # torch.nn.Module
    preprocess: Any  # hpctrain.train.data.Preprocess, without augmentation
    targets: int = 0  # regression: float outputs per sample (0: a classifier)

    @property
    def regression(self) -> bool:
        return self.targets > 0

    def logits(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Raw outputs, shape (N, classes) or (N, targets), for float32 samples of ``sample_shape`` (or flat)."""
        import torch

        a = np.asarray(x)
        if a.dtype.kind not in "fiub":
            raise PredictError(f"input of dtype {a.dtype}; expected float32 samples of shape {self.sample_shape}")
        with np.errstate(over="ignore"):
            x = a.astype(np.float32, copy=False)
        if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size and np.any(np.isinf(x) & np.isfinite(a)):
            raise PredictError(f"input of dtype {a.dtype} holds values beyond the float32 range (|x| > 3.4e38); "
                               "rescale it as the training data was")
        per = int(np.prod(self.sample_shape))
        # (N, *other) with the same per-sample size is reshaped; anything else would merge or split samples
        if x.ndim == 0 or (x.ndim == 1 and x.size % per) or (x.ndim > 1 and int(np.prod(x.shape[1:])) != per):
            raise PredictError(f"input of shape {x.shape} does not hold samples of shape {self.sample_shape}; "
                               f"pass (N, *{self.sample_shape}) or (N, {per})")
        if x.shape[1:] != self.sample_shape:
            x = x.reshape((-1,) + self.sample_shape)
        out = np.empty((len(x), self.targets or len(self.classes)), dtype=np.float32)
        with torch.no_grad():
            for lo in range(0, len(x), batch_size):
                xb = self.preprocess.features(torch.from_numpy(np.ascontiguousarray(x[lo:lo + batch_size])))
                out[lo:lo + batch_size] = self.model(xb).numpy()
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.regression:
            raise PredictError(f"{str(self.run_dir)!r} is a regression model: it has no class probabilities; use "
                               "predict()")
        z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class ids (the dataset's labels, not indices); for regression the float predictions,
        (N,) for one target and (N, targets) for several."""
        if self.regression:
            out = self.logits(x)
            return out[:, 0] if self.targets == 1 else out
        return np.asarray(self.classes, dtype=np.int64)[self.logits(x).argmax(axis=1)]


def load_run_dir(run_dir: str | Path) -> TrainedRun:
    """The final (or newest valid) checkpoint of a completed run, as a :class:`TrainedRun`.
    (:func:`hpctrain.predict.load_run` also takes a model artifact.)"""
    from hpctrain.train import checkpoint as C
    from hpctrain.train.config import load_config
    from hpctrain.train.data import Preprocess
    from hpctrain.train.models import model_from_config

    run = Path(run_dir)
    if not run.is_dir():
        what = "is a file, not a directory" if run.exists() else "does not exist"
        raise PredictError(f"run directory {str(run)!r} {what}; pass the run.dir of a finished "
                           "'hpctrain train' run")
    rd = RunDir(run)
    try:
        result = rd.load_result()
    except ResultError as e:
        raise PredictError(str(e)) from None
    if result.get("status") != "completed":
        raise PredictError(f"{str(rd.result)!r}: status {result.get('status')!r}, expected 'completed'")
    ckpt_dir = rd.checkpoints
    final = rd.final_checkpoint
    if final.is_file():
        path, payload = final, C.load(final)
    else:
        found = C.newest_valid(ckpt_dir) if ckpt_dir.is_dir() else None
        if not found:
            raise PredictError(f"{str(run)!r}: no valid checkpoint in {str(ckpt_dir)!r}; the run has no weights")
        path, payload = found
    missing = [k for k in ("model", "classes", "sample_shape", "config") if k not in payload]
    if missing:
        raise PredictError(f"checkpoint {str(path)!r} lacks {missing}; it was not written by hpctrain train")
    cfg = load_config(payload["config"])
    classes = [int(c) for c in payload["classes"]]
    shape = tuple(int(v) for v in payload["sample_shape"])
    imputer = cfg.imputation.imputer
    if imputer is not None and not Path(imputer).is_file():
        raise PredictError(f"the run was trained with imputer statistics {str(imputer)!r}, which are not there "
                           "(relative paths are taken from the current directory); run from the directory the "
                           "run was trained in, or restore the file")
    targets = int(payload.get("targets") or 0)
    model = model_from_config(cfg.model, shape, targets or len(classes), targets > 0)
    model.load_state_dict(payload["model"])
    model.eval()
    prep = Preprocess(classes, imputer, cfg.imputation.on_nan, [], cfg.run.seed, 0)
    return TrainedRun(run, path, result, cfg, classes, shape, model, prep, targets)
