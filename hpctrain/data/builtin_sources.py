"""Built-in datasets: ``sklearn:NAME`` and ``synthetic:classification?...``, with injected
missing values and class imbalance."""

from __future__ import annotations

import math
from typing import Any, Iterator
from urllib.parse import parse_qsl

import numpy as np

from hpctrain.data.cells import (
    _human,
    CHUNK_CELLS,
    Chunk,
    Source,
)
from hpctrain.data.file_sources import _memory_source
from hpctrain.data.shards import ShardError

SKLEARN = ("digits", "breast_cancer", "wine", "iris", "diabetes")
SKLEARN_REGRESSION = ("diabetes",)  # float targets: shard these with --task regression
COMMON_PARAMS = {"missing": float, "imbalance": float, "seed": int}
SKLEARN_PARAMS = {**COMMON_PARAMS, "flat": int}
SYNTH_PARAMS = {**COMMON_PARAMS, "rows": int, "features": int, "classes": int, "shape": str, "sep": float}


# numpy's Generator takes any non-negative int, but scikit-learn's random_state and numpy's legacy
# seeding stop at 2**32 - 1; one range for every seed keeps a seed valid wherever it is passed on.
SEED_LIMIT = 2**32
# Ceilings far above any real synthetic set, low enough that a typo (an extra three zeros) fails
# at once instead of filling a disk or allocating the class means (classes x features floats).
SYNTH_MAX_ROWS = 10**9
SYNTH_MAX_FEATURES = 10**6
SYNTH_MAX_CLASSES = 10**4
SYNTH_MAX_CENTER_VALUES = 2**28  # classes x features: 1 GiB of float32 class means


def check_seed(seed: Any, what: str = "--seed") -> int:
    """``seed`` if it is an integer in [0, 2**32); else a ShardError naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ShardError(f"{what} {seed!r}: expected an integer from 0 to {SEED_LIMIT - 1} (2**32 - 1), the range "
                         "scikit-learn and numpy accept as a seed")
    return int(seed)


def _params(query: str, allowed: dict[str, type], spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if k not in allowed:
            raise ShardError(f"{spec!r}: unknown parameter {k!r}; valid: {', '.join(sorted(allowed))}")
        try:
            out[k] = allowed[k](v)
        except ValueError:
            raise ShardError(f"{spec!r}: parameter {k}={v!r} is not a {allowed[k].__name__}") from None
    if not 0.0 <= out.get("missing", 0.0) < 1.0:
        raise ShardError(f"{spec!r}: missing={out['missing']} must be in [0, 1)")
    if not 1.0 <= out.get("imbalance", 1.0) < math.inf:
        raise ShardError(f"{spec!r}: imbalance={out['imbalance']} must be a finite number >= 1 (the "
                         "majority/minority ratio)")
    if not math.isfinite(out.get("sep", 1.0)):
        raise ShardError(f"{spec!r}: sep={out['sep']} must be a finite number (the scale of the class means)")
    if "seed" in out:
        check_seed(out["seed"], f"{spec!r}: seed")
    return out


def class_keep_probs(n_classes: int, imbalance: float) -> np.ndarray:
    """Class k of C is kept (or drawn) with weight R**(-k/(C-1)): the first class is the
    majority, the last R times rarer."""
    if n_classes <= 1 or imbalance <= 1.0:
        return np.ones(max(n_classes, 1))
    return imbalance ** (-np.arange(n_classes) / (n_classes - 1))


def inject(chunks: Iterator[Chunk], classes: list[int], *, missing: float, imbalance: float,
           seed: int) -> Iterator[Chunk]:
    """Subsample classes to the imbalance ratio and blank features to NaN, reproducibly."""
    rng = np.random.default_rng([seed, 7])
    keep = class_keep_probs(len(classes), imbalance)
    index = {c: i for i, c in enumerate(classes)}
    for x, y in chunks:
        if imbalance > 1.0:
            p = keep[np.array([index[int(v)] for v in y], dtype=np.int64)] if len(y) else np.zeros(0)
            m = rng.random(len(y)) < p
            x, y = x[m], y[m]
        if missing > 0.0:
            x = x.copy()
            x[rng.random(x.shape) < missing] = np.nan
        yield x, y


def sklearn_source(name: str, query: str, spec: str, regression: bool = False) -> Source:
    p = _params(query, SKLEARN_PARAMS, spec)
    if name not in SKLEARN:
        raise ShardError(f"{spec!r}: unknown scikit-learn dataset {name!r}; choose one of "
                         f"{', '.join('sklearn:' + s for s in SKLEARN)}")
    from hpctrain.extras import require

    datasets = require("sklearn.datasets", repr(spec))
    b = getattr(datasets, f"load_{name}")()
    x = np.asarray(b.data, dtype=np.float32)
    names = [str(v) for v in getattr(b, "feature_names", [f"f{i}" for i in range(x.shape[1])])]
    if (name in SKLEARN_REGRESSION) != regression:
        raise ShardError(f"{spec!r} is a {'regression' if name in SKLEARN_REGRESSION else 'classification'} "
                         f"dataset; {'pass' if name in SKLEARN_REGRESSION else 'drop'} --task regression")
    if regression:
        if p.get("imbalance", 1.0) > 1 or p.get("missing", 0.0) > 0:
            raise ShardError(f"{spec!r}: imbalance= and missing= are for class labels; remove them")
        return _memory_source(spec, x, np.asarray(b.target, dtype=np.float32), names, params=p, targets=1)
    y = np.asarray(b.target, dtype=np.int64)
    if name == "digits" and not p.get("flat"):
        x = x.reshape(-1, 1, 8, 8)  # an image dataset: (C, H, W) for the CNN; ?flat=1 keeps 64 columns
    classes = sorted(int(c) for c in np.unique(y))
    src = _memory_source(spec, x, y, names, classes=classes, params=p)
    if p.get("missing", 0.0) > 0 or p.get("imbalance", 1.0) > 1:
        base = src.read
        src.read = lambda: inject(base(), classes, missing=p.get("missing", 0.0),
                                  imbalance=p.get("imbalance", 1.0), seed=p.get("seed", 0))
        if p.get("imbalance", 1.0) > 1:
            src.rows = None
            src.count_rows = lambda: sum(len(c[1]) for c in src.read())
    return src


def synthetic_regression(query: str, spec: str) -> Source:
    """``synthetic:regression?rows=&features=&targets=&noise=&seed=``: y = x W + noise (one or several targets)."""
    p = _params(query, {"rows": int, "features": int, "targets": int, "noise": float, "seed": int}, spec)
    rows, d, k, seed = p.get("rows", 2000), p.get("features", 10), p.get("targets", 1), p.get("seed", 0)
    if not (1 <= rows <= SYNTH_MAX_ROWS and 1 <= d <= 10_000 and 1 <= k <= 1000):
        raise ShardError(f"{spec!r}: need 1 <= rows <= {SYNTH_MAX_ROWS:,}, 1 <= features <= 10000 and "
                         "1 <= targets <= 1000")
    w = np.random.default_rng([seed, 1]).standard_normal((d, k)).astype(np.float32)
    step = max(1, CHUNK_CELLS * 8 // d)

    def read() -> Iterator[Chunk]:
        for i, s in enumerate(range(0, rows, step)):
            n = min(step, rows - s)
            rng = np.random.default_rng([seed, 2, i])
            x = rng.standard_normal((n, d), dtype=np.float32)
            y = x @ w + p.get("noise", 0.1) * rng.standard_normal((n, k), dtype=np.float32)
            yield x, (y[:, 0] if k == 1 else y)

    return Source(name=spec, feature_names=[f"f{i}" for i in range(d)], sample_shape=(d,), rows=rows, read=read,
                  params=p, targets=k)


def synthetic_source(kind: str, query: str, spec: str, regression: bool = False) -> Source:
    if (kind == "regression") != regression:
        raise ShardError(f"{spec!r}: synthetic:{kind} {'needs' if kind == 'regression' else 'is not for'} "
                         "--task regression")
    if kind == "regression":
        return synthetic_regression(query, spec)
    if kind != "classification":
        raise ShardError(f"{spec!r}: unknown synthetic kind {kind!r}; use synthetic:classification?rows=... or "
                         "synthetic:regression?rows=...")
    p = _params(query, SYNTH_PARAMS, spec)
    rows, n_classes, seed = p.get("rows", 10_000), p.get("classes", 2), p.get("seed", 0)
    if "shape" in p:
        try:
            shape = tuple(int(v) for v in p["shape"].lower().split("x"))
        except ValueError:
            raise ShardError(f"{spec!r}: shape={p['shape']!r} is not like 1x8x8") from None
    else:
        shape = (p.get("features", 20),)
    if rows < 1 or n_classes < 2 or any(v < 1 for v in shape):
        raise ShardError(f"{spec!r}: need rows >= 1, classes >= 2 and positive feature counts")
    d = math.prod(shape)
    if rows > SYNTH_MAX_ROWS or d > SYNTH_MAX_FEATURES or n_classes > SYNTH_MAX_CLASSES:
        raise ShardError(f"{spec!r}: rows={rows}, {d} features, classes={n_classes}; a synthetic set is limited to "
                         f"{SYNTH_MAX_ROWS:,} rows, {SYNTH_MAX_FEATURES:,} features and {SYNTH_MAX_CLASSES:,} classes "
                         f"({_human(rows * (4 * d + 8))} uncompressed as asked); check for extra zeros")
    if n_classes * d > SYNTH_MAX_CENTER_VALUES:
        raise ShardError(f"{spec!r}: classes={n_classes} x {d} features need {_human(4 * n_classes * d)} of "
                         f"class means in memory (limit {_human(4 * SYNTH_MAX_CENTER_VALUES)}); use fewer classes or "
                         "features")
    # Class means on a scale where the classes overlap a little: learnable, not trivial.
    centers = (np.random.default_rng([seed, 1]).standard_normal((n_classes, d)) * p.get("sep", 1.0)).astype(np.float32)
    prior = class_keep_probs(n_classes, p.get("imbalance", 1.0))
    prior = prior / prior.sum()
    missing = p.get("missing", 0.0)
    step = max(1, CHUNK_CELLS * 8 // d)

    def read() -> Iterator[Chunk]:
        for i, s in enumerate(range(0, rows, step)):
            n = min(step, rows - s)
            rng = np.random.default_rng([seed, 2, i])
            y = rng.choice(n_classes, size=n, p=prior).astype(np.int64)
            x = rng.standard_normal((n, d), dtype=np.float32)
            x += centers[y]
            if missing > 0:
                x[rng.random((n, d)) < missing] = np.nan
            yield x.reshape(n, *shape), y

    return Source(name=spec, feature_names=[f"f{i}" for i in range(d)], sample_shape=shape, rows=rows, read=read,
                  classes=list(range(n_classes)), params=p)
