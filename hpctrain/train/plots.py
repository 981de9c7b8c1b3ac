"""PNG plots of a finished run, from its metrics.jsonl (rank 0 only, Agg backend: no display)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from hpctrain.rundir import RunDir


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def write_plots(run_dir: Path, confusion: Sequence[Sequence[int]] | None = None,
                class_names: Sequence[str] | None = None, title: str | None = None,
                pred_true: tuple | None = None) -> list[Path]:
    """loss.png, lr.png, metrics.png and confusion.png in ``run_dir/plots``; returns the paths.
    ``title`` (default: the run directory's name) heads every plot, so a PNG seen alone says its run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hpctrain.fileio import atomic_path

    run_dir = Path(run_dir)
    out = RunDir(run_dir).plots
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(RunDir(run_dir).metrics)
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    written = []
    run = title or run_dir.resolve().name

    def save(fig, name):
        dest = out / name
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(dest)

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (step)", alpha=0.6)
    if epochs:
        ax.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        if any("val_loss" in r for r in epochs):
            ax.plot([r["step"] for r in epochs if "val_loss" in r], [r["val_loss"] for r in epochs if "val_loss" in r],
                    "s-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{run}: loss")
    ax.legend()
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in steps], [r["lr"] for r in steps])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{run}: learning rate (logged steps)")
    save(fig, "lr.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("val_accuracy", "val_macro_f1", "val_r2"):
        pts = [(r["epoch"], r[key]) for r in epochs if key in r]
        if pts:
            ax.plot(*zip(*pts), "o-", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation metric")
    ax.set_ylim(min([0.0] + [r["val_r2"] for r in epochs if "val_r2" in r]), 1.02)
    ax.set_title(f"{run}: validation metrics")
    ax.legend(loc="lower right")
    save(fig, "metrics.png")

    if confusion is not None:
        cm = np.asarray(confusion)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(cm, cmap="Blues")
        k = cm.shape[0]
        names = list(class_names) if class_names else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names)
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{run}: confusion matrix (validation, {int(cm.sum())} samples)")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        save(fig, "confusion.png")
    if pred_true is not None:  # regression: predicted against true on the validation rows, per target
        pred, true = (np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in pred_true)
        fig, ax = plt.subplots(figsize=(5, 5))
        for j in range(true.shape[1]):
            ax.scatter(true[:, j], pred[:, j], s=8, alpha=0.6, label=f"target {j}" if true.shape[1] > 1 else None)
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="predicted = true")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_title(f"{run}: predicted vs true (validation, {len(true)} samples)")
        ax.legend(loc="upper left")
        save(fig, "pred_vs_true.png")
    return written
