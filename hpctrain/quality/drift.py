"""Per-feature drift between a reference and a current sample: KS tests and PSI.

KS: ``scipy.stats.ks_2samp`` per feature on the finite values, two-sided, with a
Bonferroni correction: with m features, a feature drifts at family-wise level alpha when
p < alpha / m.

PSI (population stability index): bins are the reference deciles (the outer bins are open
to -inf/+inf, repeated edges merged), proportions get ``eps`` added to every bin so an empty
bin does not make the logarithm infinite, then PSI = sum((cur - ref) * ln(cur / ref)).
Levels: < 0.1 none, 0.1 to 0.25 moderate, >= 0.25 major.

A feature counts as drifted when KS rejects after Bonferroni or PSI is major, or when it has
finite values on one side only (a feature that became entirely missing cannot be tested, and
is the plainest drift of all). KS alone
rejects tiny shifts once samples are large, and PSI alone misses shape changes within a
bin; either signal is worth a look, and both are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
PSI_EPS = 1e-4
# Every bin gets PSI_EPS added to its share; with B equal-mass bins a bin's share is 1/B, so at
# 1000 bins the smoothing is already a tenth of each bin's share (at 10,000 it equals it) and PSI
# measures the smoothing more than the data. Practice uses 10 to 20 bins.
MAX_PSI_BINS = 1000


@dataclass(kw_only=True, slots=True)
class FeatureDrift:
    name: str
    ks_stat: float
    ks_pvalue: float
    ks_drift: bool
    psi: float
    psi_level: str
    drifted: bool
    ref_count: int
    cur_count: int
    vanished: bool = False  # finite values on one side only

    def to_json(self) -> dict:
        return asdict(self)


def psi_edges(ref: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's quantiles at 1/bins .. (bins-1)/bins, deduplicated."""
    check_psi_bins(bins)
    ref = np.asarray(ref, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(ref, np.arange(1, bins) / bins))


def check_psi_bins(bins: int) -> None:
    from hpctrain.quality import QualityError

    if not 2 <= bins <= MAX_PSI_BINS:
        raise QualityError(f"--bins {bins}: PSI takes 2 to {MAX_PSI_BINS} bins of the reference quantiles (default "
                           f"10, the deciles); each bin's share gets {PSI_EPS:g} added so empty bins stay finite, "
                           f"and beyond {MAX_PSI_BINS} bins that smoothing outweighs a tenth of a bin's data")


def bin_shares(values: np.ndarray, edges: np.ndarray, eps: float = PSI_EPS) -> np.ndarray:
    """Share of finite ``values`` per bin (bin i holds edges[i-1] < v <= edges[i]), plus eps."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    return counts / max(v.size, 1) + eps


def psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10, eps: float = PSI_EPS) -> float:
    edges = psi_edges(ref, bins)
    r = bin_shares(ref, edges, eps)
    c = bin_shares(cur, edges, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def psi_level(v: float) -> str:
    if v >= PSI_MAJOR:
        return "major"
    if v >= PSI_MODERATE:
        return "moderate"
    return "none"


def feature_drift(names: list[str], ref_cols, cur_cols, alpha: float = 0.05, bins: int = 10) -> list[FeatureDrift]:
    """``ref_cols[j]`` / ``cur_cols[j]``: all values of feature j (any order; non-finite ignored)."""
    from hpctrain.extras import require

    ks_2samp = require("scipy.stats", "the drift KS test").ks_2samp

    m = max(len(names), 1)
    out = []
    for name, r, c in zip(names, ref_cols, cur_cols):
        r = np.asarray(r, dtype=np.float64)
        c = np.asarray(c, dtype=np.float64)
        r, c = r[np.isfinite(r)], c[np.isfinite(c)]
        if r.size == 0 or c.size == 0:
            stat, p = float("nan"), float("nan")
        else:
            res = ks_2samp(r, c)
            stat, p = float(res.statistic), float(res.pvalue)
        ks_drift = bool(p < alpha / m) if np.isfinite(p) else False
        v = psi(r, c, bins) if r.size and c.size else float("nan")
        level = psi_level(v) if np.isfinite(v) else "none"
        vanished = (r.size == 0) != (c.size == 0)
        out.append(FeatureDrift(name=name, ks_stat=stat, ks_pvalue=p, ks_drift=ks_drift, psi=v, psi_level=level,
                                drifted=ks_drift or level == "major" or vanished, ref_count=int(r.size),
                                cur_count=int(c.size), vanished=vanished))
    return out


def drift_share(results: list[FeatureDrift]) -> float:
    return sum(r.drifted for r in results) / max(len(results), 1)


def most_drifted(results: list[FeatureDrift], n: int = 6) -> list[FeatureDrift]:
    """Drifted features first, then by KS statistic, then PSI (both larger = more drift)."""
    def key(r: FeatureDrift):
        return (not r.drifted, -np.nan_to_num(r.ks_stat), -np.nan_to_num(r.psi))

    return sorted(results, key=key)[:n]
