"""Class rebalancing: target counts, random over/under-sampling and SMOTE.

Target counts follow imbalanced-learn's sampling strategies, so a user who knows
RandomOverSampler/RandomUnderSampler gets the same class counts:
- oversample, no ratio ('auto' = 'not majority'): every class grows to the majority count;
- undersample, no ratio ('auto' = 'not minority'): every class shrinks to the minority count;
- oversample with ratio R: every non-majority class grows to int(R * majority) (imblearn's
  float strategy, written as n + int(R * majority - n) exactly as imblearn computes it);
- undersample with ratio R: every non-minority class shrinks to int(minority / R).
imbalanced-learn accepts a float ratio for two classes only; here it applies per class to any
number of classes, and a class already past its target keeps its count (imblearn raises
instead), which is the same result where imblearn accepts the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpctrain.quality import QualityError

METHODS = ("oversample", "undersample", "smote")


def target_counts(counts: dict[int, int], method: str, ratio: float | None = None) -> dict[int, int]:
    if method not in METHODS:
        raise QualityError(f"balance method {method!r} is unknown; expected one of {', '.join(METHODS)}")
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) < 2:
        raise QualityError(f"balance needs at least two classes with rows, got class counts {counts}")
    if ratio is not None and not 0 < ratio <= 1:
        raise QualityError(f"--ratio {ratio}: expected 0 < R <= 1 (the minority/majority share after balancing)")
    out = dict(counts)
    if method in ("oversample", "smote"):
        major_cls = max(present, key=present.get)
        n_major = present[major_cls]
        for c, n in present.items():
            if c == major_cls:
                continue
            t = n_major if ratio is None else n + int(n_major * ratio - n)
            out[c] = max(n, t)
    else:
        minor_cls = min(present, key=present.get)
        n_minor = present[minor_cls]
        for c, n in present.items():
            if c == minor_cls:
                continue
            t = n_minor if ratio is None else int(n_minor / ratio)
            out[c] = min(n, t)
    return out


def resample_indices(y: np.ndarray, targets: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    """Row indices realising ``targets`` by random sampling: a growing class keeps all its rows
    and draws the extra ones with replacement; a shrinking class draws without replacement.
    The result is sorted, so rows keep their original order (repeats stay adjacent)."""
    y = np.asarray(y).astype(np.int64)
    parts = []
    for c in sorted(targets):
        idx = np.flatnonzero(y == c)
        t = targets[c]
        if t >= idx.size:
            extra = rng.choice(idx, size=t - idx.size, replace=True) if idx.size else idx[:0]
            parts.append(np.concatenate([idx, extra]))
        else:
            parts.append(rng.choice(idx, size=t, replace=False))
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


@dataclass(kw_only=True, slots=True)
class SmoteSamples:
    x: np.ndarray       # new rows (n_new x features)
    base: np.ndarray    # index (within the class rows) of the row each new point starts from
    other: np.ndarray   # index of the neighbour it moves towards
    gap: np.ndarray     # position along the segment, in [0, 1)
    k: int = 0          # neighbours used: the k asked for, or fewer in a class of k rows or less


def smote_class(x: np.ndarray, n_new: int, k: int, rng: np.random.Generator) -> SmoteSamples:
    """``n_new`` synthetic rows of one class: base + u * (neighbour - base), with the base row
    drawn uniformly, the neighbour uniformly among its k nearest same-class rows and
    u ~ U[0, 1). Missing values must be imputed first: a segment to NaN is undefined."""
    from hpctrain.extras import require

    NearestNeighbors = require("sklearn.neighbors", "SMOTE (k nearest neighbours)").NearestNeighbors

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = x.shape[0]
    if n_new <= 0:
        z = np.zeros(0, dtype=np.int64)
        return SmoteSamples(x=np.zeros((0, x.shape[1])), base=z, other=z, gap=np.zeros(0))
    if k < 1:
        raise QualityError(f"smote: --k {k}; expected at least 1 neighbour (default 5)")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise QualityError(f"smote: {bad} of the class's {n} rows hold missing or infinite values, and a segment "
                           "to a NaN is undefined; impute them first (hpctrain impute) or drop them "
                           "(hpctrain clean --drop-rows-missing-over 0), or use --method oversample")
    if n < 2:
        raise QualityError(f"smote: a class with {n} row cannot be interpolated; it needs at least 2 rows "
                           "(use --method oversample)")
    k = min(k, n - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    own = idx == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True
    neigh = idx[~own].reshape(n, k)
    base = rng.integers(0, n, size=n_new)
    other = neigh[base, rng.integers(0, k, size=n_new)]
    gap = rng.random(n_new)
    new = x[base] + gap[:, None] * (x[other] - x[base])
    return SmoteSamples(x=new, base=base, other=other, gap=gap, k=k)


def balance_arrays(x: np.ndarray, y: np.ndarray, method: str, ratio: float | None = None, seed: int = 0,
                   k: int = 5, notes: list[str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, dict[int, int], dict[int, int]]:
    """Balanced (x, y) with x in its input shape; also the class counts before and after.
    ``notes``, if given, receives a line for each class where SMOTE used fewer than ``k``
    neighbours because the class is too small (imbalanced-learn raises there instead)."""
    from hpctrain.quality import check_seed
    from hpctrain.quality.stats import class_counts

    check_seed(seed)
    y = np.asarray(y).astype(np.int64)
    before = class_counts(y)
    targets = target_counts(before, method, ratio)
    rng = np.random.default_rng(seed)
    if method != "smote":
        idx = resample_indices(y, targets, rng)
        return x[idx], y[idx], before, class_counts(y[idx])
    xs, ys = [x], [y]
    flat = x.reshape(len(x), -1)
    for c in sorted(targets):
        extra = targets[c] - before.get(c, 0)
        if extra <= 0:
            continue
        try:
            s = smote_class(flat[y == c], extra, k, rng)
        except QualityError as e:
            raise QualityError(f"class {c}: {e}") from None
        if s.k < k and notes is not None:
            notes.append(f"class {c} has {before.get(c, 0)} rows, so SMOTE used k={s.k} neighbours instead of "
                         f"--k {k}")
        xs.append(s.x.astype(x.dtype).reshape((extra,) + x.shape[1:]))
        ys.append(np.full(extra, c, dtype=np.int64))
    xo, yo = np.concatenate(xs), np.concatenate(ys)
    return xo, yo, before, class_counts(yo)
