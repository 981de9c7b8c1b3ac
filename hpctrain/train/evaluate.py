"""Validation of a training run: every rank scores its contiguous share of the validation
rows, and the results add up exactly over ranks.

* classification: cross-entropy sum and the confusion matrix (summed);
* regression: per-target sums of squared and absolute errors and of y, y^2 (summed), which
  give MSE, MAE and R^2 exactly;
* ``metrics.extra``: rank 0 gathers every rank's outputs and targets, so a metric that does
  not decompose over rows (AUC, balanced accuracy) is still exact.

Forward passes run under the run's autocast precision; outputs are compared in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

BLOCK = 512  # validation rows per forward pass


@dataclass(kw_only=True)
class Evaluator:
    comm: Any
    forward: Callable  # the (possibly compiled) model's forward
    model: Any  # the plain module (train/eval mode)
    prep: Any  # hpctrain.train.data.Preprocess
    val: tuple[np.ndarray, np.ndarray]  # this rank's share
    device: Any
    precision: str
    num_classes: int
    targets: int  # regression targets (0: classification)
    extra_metrics: dict  # name -> fn, from hpctrain.train.metrics.resolve_metrics

    def __call__(self, keep_predictions: bool = False) -> dict:
        """Collective. ``keep_predictions`` (regression): rank 0 also gets ``pred_true``, the list
        of every rank's (predictions, targets) for the predicted-vs-true plot."""
        outputs: list = []
        if self.targets:
            ev = self._regression(keep_predictions, outputs)
        else:
            ev = self._classes(outputs)
        if self.extra_metrics:
            shares = self.comm.gather(outputs)
            got = None
            if shares is not None:
                from hpctrain.train.metrics import compute_metrics

                out = np.concatenate([o for share in shares for o, _ in share])
                tgt = np.concatenate([t for share in shares for _, t in share])
                got = compute_metrics(self.extra_metrics, out, tgt)
            ev.update(self.comm.broadcast(got))
        return ev

    def _batches(self):
        """(x on the device, its numpy targets) per block of 512 validation rows, model in eval mode."""
        import torch

        x, y = self.val
        for lo in range(0, len(y), BLOCK):
            yield self.prep.features(torch.from_numpy(x[lo:lo + BLOCK])).to(self.device), y[lo:lo + BLOCK]

    def _outputs(self, xb):
        from hpctrain.train.precision import autocast

        with autocast(self.device, self.precision):
            return self.forward(xb).float()

    def _classes(self, outputs: list) -> dict:
        import torch

        from hpctrain.train.metrics import confusion, report

        k = self.num_classes
        cm = np.zeros((k, k), dtype=np.float64)
        loss_sum = 0.0
        self.model.eval()
        with torch.no_grad():
            for xb, y in self._batches():
                yb = self.prep.labels(torch.from_numpy(y)).to(self.device)
                logits = self._outputs(xb)
                if self.extra_metrics:
                    outputs.append((logits.cpu().numpy(), yb.cpu().numpy()))
                loss_sum += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
                cm += confusion(yb.cpu().numpy(), logits.argmax(1).cpu().numpy(), k)
        self.model.train()
        tot = self.comm.allreduce(np.concatenate([[loss_sum, float(len(self.val[1]))], cm.ravel()]))
        cm = tot[2:].reshape(k, k)
        rep = report(cm)
        return {"val_loss": float(tot[0] / max(1.0, tot[1])), "val_accuracy": rep["accuracy"],
                "val_macro_f1": rep["macro_f1"], "val_per_class_recall": rep["per_class_recall"],
                "val_per_class_f1": rep["per_class_f1"], "confusion": cm.astype(int).tolist()}

    def _regression(self, keep_predictions: bool, outputs: list) -> dict:
        import torch

        from hpctrain.train.metrics import regression_report, regression_sums

        k = self.targets
        preds = []
        self.model.eval()
        with torch.no_grad():
            for xb, y in self._batches():
                preds.append(self._outputs(xb).cpu().numpy().reshape(len(xb), -1))
                if self.extra_metrics:
                    outputs.append((preds[-1], y))
        self.model.train()
        y = self.val[1].reshape(len(self.val[1]), -1)
        pred = np.concatenate(preds) if preds else np.zeros((0, k))
        sums = self.comm.allreduce(regression_sums(pred, y).ravel()).reshape(5, k)
        rep = regression_report(sums)
        ev = {"val_loss": rep["mse"], "val_mse": rep["mse"], "val_mae": rep["mae"], "val_r2": rep["r2"],
              "val_r2_per_target": rep["r2_per_target"], "confusion": None}
        if keep_predictions:
            ev["pred_true"] = self.comm.gather((pred, y))
        return ev
