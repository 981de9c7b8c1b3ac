"""The dataset profile: per-column statistics, dataset-wide checks and warnings.

``profile_chunks`` takes this rank's chunks and a communicator; every rank calls it and
every rank gets the same result. What is merged how:
- moments, co-moments (correlation), class counts: one mergeable state per shard, gathered
  on rank 0 and merged in manifest order (bit-identical for any number of ranks);
- quantiles, MAD: exact, by distributed bisection (see ``stats``); each rank holds its own
  rows in memory, N/size x F x 4 bytes;
- histograms, outlier counts, per-row missingness: integer counts, allreduced;
- duplicates: one 64-bit hash per row gathered on rank 0 (8 bytes per row);
- anomalies (IsolationForest) and label-noise suspects (kNN vote): on a sample chosen per
  shard with a seed derived from (seed, shard index), so the sample does not depend on the
  number of ranks either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from hpctrain.quality import QualityError, check_seed
from hpctrain.quality.outliers import anomaly_scores, count_outliers, iqr_fences, knn_majority, zscore_fences
from hpctrain.quality.stats import CoMoments, Moments, class_counts, exact_mad, exact_quantiles, hist_edges, \
    histograms, imbalance_ratio, local_sorted_columns, merge_all, row_hashes

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
# Every rank holds a features x bins count table, report.json stores it and each histogram is
# drawn a few hundred pixels wide: past about a thousand bins nothing more can be seen, only
# memory spent (a billion bins asked for 477 GiB).
MAX_BINS = 1000


@dataclass(kw_only=True, slots=True)
class ProfileConfig:
    bins: int = field(default=30, metadata={"help": "histogram bins per column"})
    sample_size: int = field(default=5000, metadata={"help": "rows sampled for IsolationForest and the kNN vote"})
    knn_k: int = field(default=5, metadata={"help": "neighbours in the label-noise vote"})
    seed: int = field(default=0, metadata={"help": "seed of the sample and the IsolationForest"})
    max_corr_features: int = field(default=128, metadata={"help": "skip the correlation matrix above this width"})
    missing_warn_pct: float = field(default=20.0, metadata={"help": "warn when a column misses more than this %"})
    imbalance_warn: float = field(default=10.0, metadata={"help": "warn when largest/smallest class exceeds this"})
    duplicates_warn_pct: float = field(default=1.0, metadata={"help": "warn when duplicate rows exceed this %"})
    outlier_warn_pct: float = field(default=5.0, metadata={"help": "warn when a column's IQR outliers exceed this %"})
    label_noise_warn_pct: float = field(default=5.0, metadata={"help": "warn when label-noise suspects exceed this %"})

    def __post_init__(self):
        if self.bins < 1 or self.sample_size < 1 or self.knn_k < 1:
            raise QualityError(f"profile settings: bins={self.bins}, sample_size={self.sample_size}, "
                               f"knn_k={self.knn_k}; each must be at least 1")
        if self.bins > MAX_BINS:
            raise QualityError(f"--bins {self.bins}: at most {MAX_BINS} histogram bins per column (default 30); "
                               "more cannot be told apart in the report's plots and cost features x bins counts "
                               "on every rank")
        check_seed(self.seed)


def _num(v) -> float | None:
    """A JSON-safe number: None, NaN and inf become null."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _sample_mask(shard_index: int, rows: int, p: float, seed: int) -> np.ndarray:
    if p >= 1.0:
        return np.ones(rows, dtype=bool)
    return np.random.default_rng([seed, shard_index]).random(rows) < p


@dataclass(slots=True)
class _ShardState:
    index: int
    moments: Moments
    comoments: CoMoments | None
    classes: dict[int, int]
    hashes: np.ndarray
    feature_hashes: np.ndarray
    sample_rows: np.ndarray
    sample_x: np.ndarray
    sample_y: np.ndarray


def profile_chunks(chunks: Iterable[tuple[int, np.ndarray, np.ndarray]], *, feature_names: list[str],
                   total_rows: int, comm=None, cfg: ProfileConfig | None = None,
                   declared_classes: list[int] | None = None) -> dict:
    """Profile the rows in ``chunks`` ((shard index, x rows x features, y)) over all ranks of ``comm``.
    Every rank must call this; every rank returns the same dict (JSON-ready)."""
    from hpctrain.comm.collective import LocalCollective

    comm = comm or LocalCollective()
    cfg = cfg or ProfileConfig()
    nfeat = len(feature_names)
    do_corr = nfeat <= cfg.max_corr_features
    p = min(1.0, cfg.sample_size / max(total_rows, 1))

    states: list[_ShardState] = []
    local_x: list[np.ndarray] = []
    for idx, x, y in chunks:
        x = x.reshape(len(x), -1)
        if x.shape[1] != nfeat:
            raise QualityError(f"shard {idx}: {x.shape[1]} features, the schema names {nfeat}")
        pick = _sample_mask(idx, len(x), p, cfg.seed)
        states.append(_ShardState(
            index=idx, moments=Moments.from_chunk(x), comoments=CoMoments.from_chunk(x) if do_corr else None,
            classes=class_counts(y), hashes=row_hashes(x, y), feature_hashes=row_hashes(x),
            sample_rows=np.flatnonzero(pick), sample_x=x[pick], sample_y=np.asarray(y)[pick]))
        local_x.append(x)
    local = np.concatenate(local_x) if local_x else np.zeros((0, nfeat), dtype=np.float32)

    # -- mergeable states, merged on rank 0 in shard order
    gathered = comm.gather(states)
    merged = None
    if comm.rank == 0:
        allst = sorted((s for part in gathered for s in part), key=lambda s: s.index)
        if not allst:
            raise QualityError("no rows to profile: the shard set is empty")
        merged = _merge_states(allst, nfeat, do_corr)
    merged = comm.broadcast(merged)
    mom: Moments = merged["moments"]

    # -- exact quantiles and MAD, histograms and outlier counts (collective on every rank)
    cols = local_sorted_columns(local) if nfeat else []
    q = exact_quantiles(cols, mom.count, QUANTILES, comm)
    med = q[:, QUANTILES.index(0.5)]
    mad = exact_mad(cols, mom.count, med, comm)
    q1, q3 = q[:, QUANTILES.index(0.25)], q[:, QUANTILES.index(0.75)]
    out_iqr = comm.allreduce(count_outliers(local, iqr_fences(q1, q3)))
    out_z = comm.allreduce(count_outliers(local, zscore_fences(med, mad)))
    hist = comm.allreduce(histograms(local, mom.min, mom.max, cfg.bins))
    row_missing = np.isnan(local).mean(axis=1) if nfeat else np.zeros(len(local))
    row_hist = comm.allreduce(np.histogram(row_missing, bins=10, range=(0.0, 1.0))[0].astype(np.int64))

    result = None
    if comm.rank == 0:
        result = _assemble(merged, q, mad, out_iqr, out_z, hist, row_hist, feature_names, cfg, declared_classes)
    return comm.broadcast(result)


def _merge_states(allst: list[_ShardState], nfeat: int, do_corr: bool) -> dict:
    mom = merge_all([s.moments for s in allst])
    com = merge_all([s.comoments for s in allst]) if do_corr else None
    counts: dict[int, int] = {}
    for s in allst:
        for k, v in s.classes.items():
            counts[k] = counts.get(k, 0) + v
    hashes = np.concatenate([s.hashes for s in allst])
    fhashes = np.concatenate([s.feature_hashes for s in allst])
    return {
        "moments": mom, "comoments": com, "classes": dict(sorted(counts.items())),
        "hashes": hashes, "feature_hashes": fhashes,
        "sample_where": [(s.index, int(r)) for s in allst for r in s.sample_rows],
        "sample_x": np.concatenate([s.sample_x for s in allst]).reshape(-1, nfeat),
        "sample_y": np.concatenate([s.sample_y for s in allst]).astype(np.int64),
    }


def duplicate_counts(hashes: np.ndarray, feature_hashes: np.ndarray) -> tuple[int, int]:
    """(rows that repeat an earlier row exactly, rows whose features occur with more than one label)."""
    dup = int(len(hashes) - np.unique(hashes).size)
    pairs = np.unique(np.stack([feature_hashes, hashes], axis=1), axis=0)
    fh, n_labels = np.unique(pairs[:, 0], return_counts=True)
    conflicted = fh[n_labels > 1]
    return dup, int(np.isin(feature_hashes, conflicted).sum())


def _assemble(merged, q, mad, out_iqr, out_z, hist, row_hist, names, cfg: ProfileConfig,
              declared_classes) -> dict:
    mom: Moments = merged["moments"]
    rows = int(mom.rows)
    std = mom.std()
    warnings: list[dict] = []

    def warn(kind, message, value, threshold, column=None, *, rule):
        # ``rule`` is the threshold as a reader wants it ("missing > 20%"); value/threshold are its numbers
        w = {"kind": kind, "message": message, "rule": rule, "value": _num(value), "threshold": _num(threshold)}
        if column is not None:
            w["column"] = column
        warnings.append(w)

    columns = []
    for j, name in enumerate(names):
        cnt = int(mom.count[j])
        qd = {f"{qq:g}": _num(q[j, i]) for i, qq in enumerate(QUANTILES)}
        constant = cnt == 0 or mom.min[j] == mom.max[j]
        near_constant = (not constant) and q[j, QUANTILES.index(0.01)] == q[j, QUANTILES.index(0.99)]
        miss_pct = float(mom.missing_pct()[j])
        edges = hist_edges(mom.min[j], mom.max[j], cfg.bins) if cnt else np.zeros(0)
        columns.append({
            "name": name, "count": cnt, "missing": int(mom.nan_count[j]), "missing_pct": miss_pct,
            "inf_count": int(mom.inf_count[j]), "min": _num(mom.min[j]), "max": _num(mom.max[j]),
            "mean": _num(mom.mean[j]) if cnt else None, "std": _num(std[j]), "quantiles": qd, "mad": _num(mad[j]),
            "constant": bool(constant), "near_constant": bool(near_constant),
            "outliers_iqr": int(out_iqr[j]), "outliers_zscore": int(out_z[j]),
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in hist[j]]},
        })
        if miss_pct > cfg.missing_warn_pct:
            warn("missing", f"column {name!r} misses {miss_pct:.1f}% of its values", miss_pct, cfg.missing_warn_pct,
                 name, rule=f"missing > {cfg.missing_warn_pct:g}%")
        if mom.inf_count[j]:
            warn("infinite", f"column {name!r} holds {int(mom.inf_count[j])} infinite values (excluded from its "
                 "statistics)", int(mom.inf_count[j]), 0, name,
                 rule="infinite values > 0")
        if constant:
            warn("constant", f"column {name!r} is constant" + (" (no finite values)" if cnt == 0 else ""),
                 None, None, name, rule="min == max")
        elif near_constant:
            warn("near_constant", f"column {name!r} is near-constant (about 98% or more of its values are one value)",
                 None, None, name, rule="1% quantile == 99% quantile")
        if cnt and 100.0 * out_iqr[j] / cnt > cfg.outlier_warn_pct:
            pct = 100.0 * out_iqr[j] / cnt
            warn("outliers", f"column {name!r} has {pct:.1f}% IQR outliers", pct, cfg.outlier_warn_pct, name,
                 rule=f"IQR outliers > {cfg.outlier_warn_pct:g}% of values")

    counts = dict(merged["classes"])
    for c in declared_classes or []:
        counts.setdefault(int(c), 0)
    counts = dict(sorted(counts.items()))
    ratio = imbalance_ratio(counts)
    absent = [c for c, n in counts.items() if n == 0]
    if ratio > cfg.imbalance_warn:
        warn("imbalance", f"class imbalance ratio {ratio:.1f} (largest/smallest class)", ratio, cfg.imbalance_warn,
             rule=f"imbalance ratio > {cfg.imbalance_warn:g}")
    if absent:
        warn("absent_class", f"declared classes with no rows: {absent}", len(absent), 0,
             rule="a declared class has 0 rows")

    dup, conflicted = duplicate_counts(merged["hashes"], merged["feature_hashes"])
    dup_pct = 100.0 * dup / max(rows, 1)
    if dup_pct > cfg.duplicates_warn_pct:
        warn("duplicates", f"{dup} duplicate rows ({dup_pct:.2f}%)", dup_pct, cfg.duplicates_warn_pct,
             rule=f"duplicate rows > {cfg.duplicates_warn_pct:g}%")

    corr = None
    com: CoMoments | None = merged["comoments"]
    if com is not None:
        corr = {"rows_used": int(com.n), "matrix": [[_num(v) for v in row] for row in com.corr()]}

    sx, sy, where = merged["sample_x"], merged["sample_y"], merged["sample_where"]
    scores, flags = anomaly_scores(sx, seed=cfg.seed)
    order = np.argsort(-scores, kind="stable")[:10]
    score_hist = np.histogram(scores, bins=30)
    anomalies = {
        "sample_rows": int(len(sx)), "flagged": int(flags.sum()),
        "flagged_pct": 100.0 * float(flags.sum()) / max(len(sx), 1),
        "top": [{"shard": where[i][0], "row": where[i][1], "score": float(scores[i])} for i in order],
        "score_histogram": {"edges": [float(e) for e in score_hist[1]], "counts": [int(c) for c in score_hist[0]]},
    }
    maj, share = knn_majority(sx, sy, cfg.knn_k)
    sus = (maj != sy) & (share > 0.5)
    noise_pct = 100.0 * float(sus.sum()) / max(len(sx), 1)
    label_noise = {
        "sample_rows": int(len(sx)), "k": cfg.knn_k, "suspects": int(sus.sum()), "suspects_pct": noise_pct,
        "examples": [{"shard": where[i][0], "row": where[i][1], "label": int(sy[i]), "neighbours_say": int(maj[i])}
                     for i in np.flatnonzero(sus)[:20]],
    }
    if noise_pct > cfg.label_noise_warn_pct:
        warn("label_noise", f"{noise_pct:.1f}% of sampled rows disagree with their {cfg.knn_k} nearest neighbours",
             noise_pct, cfg.label_noise_warn_pct,
             rule=f"label-noise suspects > {cfg.label_noise_warn_pct:g}% of the sample")

    return {
        "rows": rows, "n_features": len(names), "feature_names": list(names), "columns": columns,
        "classes": {"counts": {str(k): int(v) for k, v in counts.items()}, "imbalance_ratio": _num(ratio),
                    "absent": absent},
        "duplicates": {"rows": dup, "pct": dup_pct, "conflicting_label_rows": conflicted},
        "correlation": corr,
        "row_missing_histogram": {"edges": [i / 10 for i in range(11)], "counts": [int(c) for c in row_hist]},
        "anomalies": anomalies, "label_noise": label_noise, "warnings": warnings,
        "method": {
            "quantiles": "exact: distributed bisection over float keys (numpy 'linear' interpolation)",
            "missing": "NaN is missing; +/-inf counted in inf_count and excluded from all other statistics",
            "correlation": "Pearson over rows with every column finite",
            "duplicates": "64-bit hash of (features, label); -0.0 == 0.0, NaN == NaN",
            "sample": f"{len(sx)} rows, per-shard Bernoulli({p_str(cfg.sample_size, rows)}) with seed {cfg.seed}",
        },
    }


def p_str(sample_size: int, rows: int) -> str:
    return f"{min(1.0, sample_size / max(rows, 1)):.4g}"


def summary_lines(r: dict, max_names: int = 8) -> list[str]:
    """A short terminal summary."""
    cc = r["classes"]["counts"]
    if len(cc) <= 12:
        counts = "class counts {" + ", ".join(f"{k}: {v}" for k, v in cc.items()) + "}"
    else:
        big, small = max(cc, key=cc.get), min(cc, key=cc.get)
        counts = f"{len(cc)} classes (largest {big}: {cc[big]}, smallest {small}: {cc[small]})"
    lines = [f"rows {r['rows']}, features {r['n_features']}, {counts} "
             f"(imbalance ratio {r['classes']['imbalance_ratio']:.2f})",
             f"duplicates {r['duplicates']['rows']} ({r['duplicates']['pct']:.2f}%), "
             f"anomalies flagged {r['anomalies']['flagged']}/{r['anomalies']['sample_rows']} sampled, "
             f"label-noise suspects {r['label_noise']['suspects']}/{r['label_noise']['sample_rows']} sampled"]
    miss = sorted(r["columns"], key=lambda c: -c["missing_pct"])[:3]
    if miss and miss[0]["missing_pct"] > 0:
        lines.append("most missing: " + ", ".join(f"{c['name']} {c['missing_pct']:.1f}%" for c in miss
                                                  if c["missing_pct"] > 0))
    ws = r["warnings"]
    lines.append(f"{len(ws)} warning(s)")
    # dataset-wide warnings one line each; column warnings one line per kind, so 60 outlying
    # columns do not push the class imbalance off the screen
    lines += [f"  WARNING [{w['kind']}] {w['message']} (rule: {w['rule']})" for w in ws if "column" not in w]
    by_kind: dict[str, list[dict]] = {}
    for w in ws:
        if "column" in w:
            by_kind.setdefault(w["kind"], []).append(w)
    for kind, group in by_kind.items():
        names = [w["column"] for w in group]
        more = f" and {len(names) - max_names} more" if len(names) > max_names else ""
        lines.append(f"  WARNING [{kind}] {len(names)} column(s) (rule: {group[0]['rule']}): "
                     f"{', '.join(names[:max_names])}{more}")
    return lines
