"""Outliers per value (IQR fences, robust z-score) and anomalies/label noise per row.

IQR: a finite value is an outlier outside [Q1 - k*IQR, Q3 + k*IQR], k = 1.5 (Tukey).
Robust z (Iglewicz and Hoaglin's modified z-score): 0.6745 * (x - median) / MAD; an
outlier when its absolute value exceeds 3.5. A column whose MAD is 0 (more than half its
values equal) has no robust-z outliers: the score is undefined there, and calling every
other value an outlier would flag all of a near-constant column's information.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from hpctrain.quality.stats import as_2d

IQR_K = 1.5
Z_THRESHOLD = 3.5
Z_CONST = 0.6745


@dataclass(kw_only=True, slots=True)
class Fences:
    """Per-column closed interval of non-outlying values (NaN bounds: no outliers in that column)."""

    lo: np.ndarray
    hi: np.ndarray


def iqr_fences(q1: np.ndarray, q3: np.ndarray, k: float = IQR_K) -> Fences:
    iqr = q3 - q1
    return Fences(lo=q1 - k * iqr, hi=q3 + k * iqr)


def zscore_fences(median: np.ndarray, mad: np.ndarray, threshold: float = Z_THRESHOLD) -> Fences:
    """|0.6745 (x - med) / MAD| > t  <=>  x outside med -/+ t * MAD / 0.6745."""
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(mad > 0, threshold * mad / Z_CONST, np.nan)
    return Fences(lo=median - half, hi=median + half)


def outlier_mask(x: np.ndarray, f: Fences) -> np.ndarray:
    """True where a finite value lies outside its column's fences."""
    x = as_2d(x)
    with np.errstate(invalid="ignore"):
        out = (x < f.lo) | (x > f.hi)
    return out & np.isfinite(x)


def robust_z(x: np.ndarray, median: np.ndarray, mad: np.ndarray) -> np.ndarray:
    x = as_2d(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mad > 0, Z_CONST * (x - median) / mad, 0.0)


def count_outliers(x: np.ndarray, f: Fences) -> np.ndarray:
    return outlier_mask(x, f).sum(axis=0).astype(np.int64)


def clip_to_fences(x: np.ndarray, f: Fences) -> tuple[np.ndarray, int]:
    """Values outside the fences set to the nearest fence; returns (new x, values changed)."""
    x = as_2d(x)
    mask = outlier_mask(x, f)
    lo = np.where(np.isnan(f.lo), -np.inf, f.lo)
    hi = np.where(np.isnan(f.hi), np.inf, f.hi)
    y = np.where(mask, np.clip(x, lo, hi), x).astype(x.dtype)
    return y, int(mask.sum())


# ---- per-row: anomalies and label noise ------------------------------------------------

def _standardize(x: np.ndarray) -> np.ndarray:
    """Columns scaled to mean 0 / std 1 with missing values at 0 (the mean), so that distances
    weigh every feature alike and a NaN neither dominates nor crashes a neighbour search."""
    x = as_2d(x).astype(np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    with warnings.catch_warnings():  # an all-missing column: its mean is NaN, set to 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=0) if x.shape[0] else np.zeros(x.shape[1])
        std = np.nanstd(x, axis=0) if x.shape[0] else np.ones(x.shape[1])
    mean = np.nan_to_num(mean)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return np.nan_to_num((x - mean) / std, nan=0.0)


def anomaly_scores(x: np.ndarray, seed: int = 0, n_estimators: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """IsolationForest anomaly scores (higher = more anomalous) and its outlier flags
    (contamination='auto', i.e. the score threshold of the original paper)."""
    from hpctrain.extras import require

    IsolationForest = require("sklearn.ensemble", "anomaly scores (IsolationForest)").IsolationForest

    z = _standardize(x)
    if z.shape[0] < 2:
        return np.zeros(z.shape[0]), np.zeros(z.shape[0], dtype=bool)
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(z)
    return -forest.score_samples(z), forest.predict(z) == -1


def knn_majority(x: np.ndarray, y: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the majority label among its k nearest other rows (Euclidean distance on
    standardized features) and that label's share. Ties in the vote go to the smallest label."""
    from hpctrain.extras import require

    NearestNeighbors = require("sklearn.neighbors", "label-noise suspects (k nearest neighbours)").NearestNeighbors
    z = _standardize(x)
    y = np.asarray(y).astype(np.int64)
    n = z.shape[0]
    if n <= 1:
        return y.copy(), np.ones(n)
    k = min(k, n - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(z)
    _, idx = nn.kneighbors(z)
    # drop the row itself; with exact duplicates it may not be listed first
    own = idx == np.arange(n)[:, None]
    has_own = own.any(axis=1)
    own[~has_own, -1] = True
    neigh = idx[~own].reshape(n, k)
    labels = y[neigh]
    classes = np.unique(y)
    votes = (labels[:, :, None] == classes[None, None, :]).sum(axis=1)
    best = votes.argmax(axis=1)
    return classes[best], votes[np.arange(n), best] / k


def label_noise_suspects(x: np.ndarray, y: np.ndarray, k: int = 5) -> np.ndarray:
    """Rows whose label differs from a strict majority (> k/2) of their k nearest neighbours."""
    maj, share = knn_majority(x, y, k)
    return (maj != np.asarray(y)) & (share > 0.5)
