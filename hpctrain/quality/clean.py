"""Cleaning steps on in-memory arrays, each one counted exactly.

Steps run in a fixed order, each on the output of the one before:
1. drop duplicates (identical features and label; the first occurrence stays);
2. drop rows whose share of missing values exceeds F;
3. outliers: clip to or drop rows outside the IQR or robust-z fences, the fences computed
   on the data as it is after steps 1-2;
4. denoise median3: a 3x3 median filter per image channel (edges repeat the border pixel);
5. drop label-noise suspects (label differs from the strict majority of the 5 nearest rows).
The order makes each count meaningful: duplicates would otherwise double-count outliers,
and mostly-empty rows would distort the fences and the neighbour votes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from hpctrain.quality import QualityError
from hpctrain.quality.outliers import Fences, clip_to_fences, iqr_fences, label_noise_suspects, outlier_mask, \
    zscore_fences
from hpctrain.comm.collective import LocalCollective
from hpctrain.quality.stats import exact_mad, exact_quantiles, first_occurrence_mask, local_sorted_columns, \
    row_hashes


@dataclass(kw_only=True, slots=True)
class CleanPlan:
    drop_duplicates: bool = field(default=False, metadata={"help": "drop repeated rows (features and label)"})
    drop_rows_missing_over: float | None = field(
        default=None, metadata={"help": "drop rows whose missing share is above this fraction (0..1)"})
    outliers: str | None = field(default=None, metadata={"help": "clip | drop: what to do with outlying values"})
    method: str = field(default="iqr", metadata={"help": "iqr | zscore: the outlier fences"})
    denoise: str | None = field(default=None, metadata={"help": "median3: 3x3 median filter for image data"})
    drop_label_noise: bool = field(default=False, metadata={"help": "drop kNN label-noise suspects"})
    knn_k: int = field(default=5, metadata={"help": "neighbours for the label-noise vote"})

    def __post_init__(self):
        if self.outliers not in (None, "clip", "drop"):
            raise QualityError(f"--outliers {self.outliers!r}: expected clip or drop")
        if self.method not in ("iqr", "zscore"):
            raise QualityError(f"--method {self.method!r}: expected iqr or zscore")
        if self.denoise not in (None, "median3"):
            raise QualityError(f"--denoise {self.denoise!r}: expected median3")
        f = self.drop_rows_missing_over
        if f is not None and not 0 <= f <= 1:
            raise QualityError(f"--drop-rows-missing-over {f}: expected a fraction between 0 and 1")
        if self.knn_k < 1:
            raise QualityError(f"knn_k {self.knn_k}: expected at least 1")

    def is_empty(self) -> bool:
        return not (self.drop_duplicates or self.drop_rows_missing_over is not None or self.outliers
                    or self.denoise or self.drop_label_noise)


@dataclass(kw_only=True, slots=True)
class StepCount:
    step: str
    rows_in: int
    rows_removed: int = 0
    rows_changed: int = 0
    values_changed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def fences_for(x2d: np.ndarray, method: str) -> Fences:
    cols = local_sorted_columns(x2d)
    counts = np.array([c.size for c in cols])
    comm = LocalCollective()
    if method == "iqr":
        q = exact_quantiles(cols, counts, [0.25, 0.75], comm)
        return iqr_fences(q[:, 0], q[:, 1])
    med = exact_quantiles(cols, counts, [0.5], comm)[:, 0]
    return zscore_fences(med, exact_mad(cols, counts, med, comm))


def median3(x: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
    """3x3 median filter over the last two axes of each sample, channels independent."""
    from scipy.ndimage import median_filter

    if len(sample_shape) < 2:
        raise QualityError(f"--denoise median3 needs image samples (H,W) or (C,H,W); this data has sample "
                           f"shape {tuple(sample_shape)}. Drop --denoise for tabular data")
    xs = x.reshape((x.shape[0],) + tuple(sample_shape))
    size = (1,) * (xs.ndim - 2) + (3, 3)
    return median_filter(xs, size=size, mode="nearest").reshape(x.shape)


def clean_arrays(x: np.ndarray, y: np.ndarray, plan: CleanPlan,
                 sample_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, list[StepCount]]:
    """Apply ``plan`` to (x, y); x keeps its shape per sample. Returns the new arrays and one
    count record per step that ran."""
    sample_shape = tuple(sample_shape) if sample_shape is not None else tuple(x.shape[1:])
    y = np.asarray(y).astype(np.int64)
    steps: list[StepCount] = []

    def flat() -> np.ndarray:
        return x.reshape(len(x), -1)

    if plan.drop_duplicates:
        keep = first_occurrence_mask(row_hashes(flat(), y))
        steps.append(StepCount(step="drop_duplicates", rows_in=len(x), rows_removed=int((~keep).sum())))
        x, y = x[keep], y[keep]
    if plan.drop_rows_missing_over is not None:
        share = np.isnan(flat()).mean(axis=1) if flat().shape[1] else np.zeros(len(x))
        keep = share <= plan.drop_rows_missing_over
        steps.append(StepCount(step="drop_rows_missing_over", rows_in=len(x), rows_removed=int((~keep).sum())))
        x, y = x[keep], y[keep]
    if plan.outliers and len(x):
        f = fences_for(flat(), plan.method)
        name = f"outliers_{plan.outliers}_{plan.method}"
        if plan.outliers == "drop":
            keep = ~outlier_mask(flat(), f).any(axis=1)
            steps.append(StepCount(step=name, rows_in=len(x), rows_removed=int((~keep).sum())))
            x, y = x[keep], y[keep]
        else:
            rows = outlier_mask(flat(), f).any(axis=1)
            new, nval = clip_to_fences(flat(), f)
            steps.append(StepCount(step=name, rows_in=len(x), rows_changed=int(rows.sum()), values_changed=nval))
            x = new.astype(x.dtype).reshape(x.shape)
    if plan.denoise == "median3":
        new = median3(x, sample_shape).astype(x.dtype)
        before, after = flat(), new.reshape(len(new), -1)
        diff = ~((before == after) | (np.isnan(before) & np.isnan(after)))
        steps.append(StepCount(step="denoise_median3", rows_in=len(x), rows_changed=int(diff.any(axis=1).sum()),
                               values_changed=int(diff.sum())))
        x = new
    if plan.drop_label_noise and len(x):
        sus = label_noise_suspects(flat(), y, plan.knn_k)
        steps.append(StepCount(step="drop_label_noise", rows_in=len(x), rows_removed=int(sus.sum())))
        x, y = x[~sus], y[~sus]
    return x, y, steps
