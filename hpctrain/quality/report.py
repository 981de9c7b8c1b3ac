"""Plots (matplotlib, Agg backend: no display needed on a compute node) and the self-contained
HTML report: every plot is embedded as a base64 PNG, so the file opens from disk, by mail
or from a job's output directory, with no server and no network.

The page carries a tiny script that marks ``<body data-images-loaded="N/M">`` once every
image has decoded; the browser test reads it from the DOM.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from hpctrain.fileio import atomic_write_bytes, atomic_write_text
from hpctrain.pictures import literal as _t, plt as _plt, png_bytes as _png  # noqa: F401


def _bars(ax, edges, counts, **kw):
    edges = np.asarray(edges, dtype=float)
    counts = np.asarray(counts, dtype=float)
    if edges.size >= 2 and counts.size == edges.size - 1:
        ax.stairs(counts, edges, fill=True, **kw)


def _panels(n: int, max_cols: int, panel_size: tuple[float, float]):
    """A grid of ``n`` panels, at most ``max_cols`` wide: (pyplot, figure, the n visible axes);
    the grid's spare cells are hidden."""
    plt = _plt()
    ncol = min(max_cols, max(n, 1))
    nrow = (max(n, 1) + ncol - 1) // ncol
    fig, grid = plt.subplots(nrow, ncol, figsize=(panel_size[0] * ncol, panel_size[1] * nrow), squeeze=False)
    for i, ax in enumerate(grid.flat):
        ax.set_visible(i < n)
    return plt, fig, list(grid.flat)[:n]


def plot_histograms(columns: list[dict], max_plots: int = 24) -> bytes:
    cols = columns[:max_plots]
    plt, fig, axes = _panels(len(cols), 4, (3.2, 2.2))
    for ax, c in zip(axes, cols):
        _bars(ax, c["histogram"]["edges"], c["histogram"]["counts"], color="#4C72B0")
        ax.set_title(_t(c["name"]), fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("Histograms of finite values" + (f" (first {max_plots} of {len(columns)} columns; all are in "
                                                   "report.json)" if len(columns) > max_plots else ""))
    fig.supxlabel("value", fontsize=9)
    fig.supylabel("rows", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def plot_missing(columns: list[dict], row_hist: dict, max_cols: int = 25) -> bytes:
    plt = _plt()
    # horizontal bars, most-missing first: names stay readable however many columns there are
    cols = [c for c in sorted(columns, key=lambda c: -c["missing_pct"]) if c["missing_pct"] > 0][:max_cols]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, max(3.2, 0.7 + 0.22 * len(cols))),
                               gridspec_kw={"width_ratios": [1.2, 1]})
    if cols:
        a.barh(range(len(cols)), [c["missing_pct"] for c in cols], color="#DD8452")
        a.set_yticks(range(len(cols)), [_t(c["name"]) for c in cols], fontsize=7)
        a.invert_yaxis()
    else:
        a.text(0.5, 0.5, "no missing values", ha="center", va="center", transform=a.transAxes)
        a.set_yticks([])
    a.set_xlabel("% of the column's values missing")
    shown = f"top {len(cols)} of {len(columns)} columns" if len(cols) < len(columns) else f"{len(columns)} columns"
    a.set_title(f"Missing values per column ({shown})", fontsize=10)
    _bars(b, row_hist["edges"], row_hist["counts"], color="#DD8452")
    b.set_xlabel("share of a row's values missing")
    b.set_ylabel("rows")
    b.set_title("Missingness per row", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_classes(counts: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    keys = list(counts)
    bars = ax.bar([_t(k) for k in keys], [counts[k] for k in keys], color="#55A868")
    if len(keys) <= 20:
        ax.bar_label(bars, fontsize=7)
    else:
        ax.tick_params(axis="x", labelrotation=90, labelsize=6)
    ax.margins(y=0.12)
    ax.set_xlabel("class")
    ax.set_ylabel("rows")
    ax.set_title("Class balance")
    return _png(fig)


def plot_corr(names: list[str], matrix: list[list]) -> bytes:
    plt = _plt()
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    size = min(2 + 0.25 * len(names), 14)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), [_t(n) for n in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), [_t(n) for n in names], fontsize=7)
    else:
        # too many names to print legibly: index in the column table (report.json feature_names)
        ax.set_xlabel("column index (order of the column table)")
        ax.set_ylabel("column index")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    ax.set_title("Correlation (Pearson, complete rows)")
    return _png(fig)


def plot_anomaly(hist: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    _bars(ax, hist["edges"], hist["counts"], color="#C44E52")
    ax.set_xlabel("IsolationForest anomaly score (higher = more anomalous)")
    ax.set_ylabel("sampled rows")
    ax.set_title("Anomaly score distribution")
    return _png(fig)


def plot_drift(features: list[tuple[str, np.ndarray, np.ndarray, str]], bins: int = 30) -> bytes:
    """Reference vs current histograms, one panel per (name, ref, cur, caption)."""
    plt, fig, axes = _panels(len(features), 3, (4, 2.8))
    for ax, (name, r, c, caption) in zip(axes, features):
        r, c = r[np.isfinite(r)], c[np.isfinite(c)]
        both = np.concatenate([r, c])
        if both.size:
            edges = np.histogram_bin_edges(both, bins=bins)
            for v, label, color in ((r, "reference", "#4C72B0"), (c, "current", "#C44E52")):
                if v.size:  # a density of no values divides by zero
                    ax.hist(v, bins=edges, density=True, alpha=0.5, label=f"{label} ({v.size})", color=color)
                else:
                    label = f"{label}: no finite values"
                    ax.plot([], [], color=color, label=label)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{_t(name)}\n{_t(caption)}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Most drifted features: reference vs current (finite values)")
    fig.supxlabel("feature value", fontsize=9)
    fig.supylabel("density", fontsize=9)
    fig.tight_layout()
    return _png(fig)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #f0f0f0; }} td.l, th.l {{ text-align: left; }}
.warn {{ color: #a00; }} h2 {{ margin-top: 1.4em; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }}
</style></head>
<body data-images-loaded="pending">
<h1>{title}</h1>
{body}
<script>
(function () {{
  function check() {{
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {{ if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }}
    document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
    if (ok < imgs.length) setTimeout(check, 50);
  }}
  window.addEventListener("load", check);
}})();
</script>
</body></html>
"""


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table(header: list[str], rows: list[list], left: int = 1, cls: str = "") -> str:
    """An HTML table; the first ``left`` columns are left-aligned, the rest (numbers) right-aligned."""
    row_cls = f' class="{html.escape(cls)}"' if cls else ""

    def cell(v, i, tag):
        cls = ' class="l"' if i < left else ""
        if isinstance(v, float):
            v = f"{v:.4g}"
        return f"<{tag}{cls}>{html.escape('' if v is None else str(v))}</{tag}>"

    out = ["<table><tr>" + "".join(cell(h, i, "th") for i, h in enumerate(header)) + "</tr>"]
    out += [f"<tr{row_cls}>" + "".join(cell(v, i, "td") for i, v in enumerate(r)) + "</tr>" for r in rows]
    return "\n".join(out) + "</table>"


def write_pngs(out_dir: Path, images: dict[str, bytes]) -> None:
    for name, png in images.items():
        atomic_write_bytes(out_dir / f"{name}.png", png)


def write_page(path: Path, title: str, body: str) -> None:
    atomic_write_text(path, _PAGE.format(title=html.escape(title), body=body))


def profile_images(r: dict) -> dict[str, bytes]:
    images = {
        "histograms": plot_histograms(r["columns"]),
        "missingness": plot_missing(r["columns"], r["row_missing_histogram"]),
        "class_balance": plot_classes(r["classes"]["counts"]),
        "anomaly_scores": plot_anomaly(r["anomalies"]["score_histogram"]),
    }
    if r.get("correlation"):
        images["correlation"] = plot_corr(r["feature_names"], r["correlation"]["matrix"])
    return images


def profile_html(r: dict, images: dict[str, bytes], source: str) -> str:
    esc = html.escape
    src = r.get("source", {})
    where = f" (split {esc(str(src['split']))}, {src['ranks']} rank(s))" if src else ""
    parts = [f"<p>Source: <code>{esc(source)}</code>{where}</p>"]
    cls, d, a, ln = r["classes"], r["duplicates"], r["anomalies"], r["label_noise"]
    cols = r["columns"]
    cells = r["rows"] * max(r["n_features"], 1)
    missing_pct = 100.0 * sum(c["missing"] for c in cols) / max(cells, 1)
    ratio = cls["imbalance_ratio"]
    summary = [
        ["rows", r["rows"]], ["features", r["n_features"]], ["classes", len(cls["counts"])],
        ["imbalance ratio (largest / smallest class)", "n/a" if ratio is None else f"{ratio:.2f}"],
        ["missing values (all cells)", f"{missing_pct:.2f}%"],
        ["constant / near-constant columns",
         f"{sum(c['constant'] for c in cols)} / {sum(c['near_constant'] for c in cols)}"],
        ["duplicate rows", f"{d['rows']} ({d['pct']:.2f}%)"],
        ["IsolationForest anomalies (sample)", f"{a['flagged']} of {a['sample_rows']} ({a['flagged_pct']:.2f}%)"],
        ["label-noise suspects (sample)", f"{ln['suspects']} of {ln['sample_rows']} ({ln['suspects_pct']:.2f}%)"],
        ["warnings", len(r["warnings"])],
    ]
    parts.append("<h2>Summary</h2>" + table(["", "value"], summary))
    parts.append("<h2>Warnings</h2>")
    if r["warnings"]:
        parts.append(table(["kind", "column", "finding", "rule"],
                           [[w["kind"], w.get("column", ""), w["message"], w["rule"]]
                            for w in sorted(r["warnings"], key=lambda w: ("column" in w, w["kind"]))],
                           left=4, cls="warn"))
    else:
        parts.append("<p>None.</p>")
    parts.append(f"<h2>Classes</h2><p>Imbalance ratio (largest / smallest class): "
                 f"{'n/a' if ratio is None else f'{ratio:.2f}'}</p>")
    parts.append(img_tag(images["class_balance"], "class balance"))
    parts.append(f"<h2>Duplicates</h2><p>{d['rows']} duplicate rows ({d['pct']:.3f}%); "
                 f"{d['conflicting_label_rows']} rows share their features with a row of another label.</p>")
    parts.append("<h2>Columns</h2>")
    rows = [[c["name"], c["count"], c["missing_pct"], c["min"], c["max"], c["mean"], c["std"],
             c["quantiles"]["0.25"], c["quantiles"]["0.5"], c["quantiles"]["0.75"], c["outliers_iqr"],
             c["outliers_zscore"], "constant" if c["constant"] else ("near-constant" if c["near_constant"] else "")]
            for c in r["columns"]]
    parts.append("<p>Statistics over finite values; quantiles are exact. Outliers: outside Q1 &minus; 1.5 IQR / "
                 "Q3 + 1.5 IQR, or robust z-score |0.6745 (x &minus; median) / MAD| &gt; 3.5.</p>")
    parts.append(table(["column", "count", "missing %", "min", "max", "mean", "std", "q25", "median", "q75",
                        "IQR outliers", "robust-z outliers", "flag"], rows))
    parts.append(img_tag(images["histograms"], "histograms"))
    parts.append("<h2>Missing values</h2>" + img_tag(images["missingness"], "missingness"))
    if "correlation" in images:
        parts.append("<h2>Correlation</h2>" + img_tag(images["correlation"], "correlation heatmap"))
    parts.append(f"<h2>Anomalies</h2><p>IsolationForest on {a['sample_rows']} sampled rows flagged {a['flagged']} "
                 f"({a['flagged_pct']:.2f}%).</p>")
    parts.append(img_tag(images["anomaly_scores"], "anomaly scores"))
    parts.append("<p>The 10 highest scores:</p>")
    parts.append(table(["shard", "row in shard", "score"], [[t["shard"], t["row"], t["score"]] for t in a["top"]]))
    parts.append(f"<h2>Label noise</h2><p>{ln['suspects']} of {ln['sample_rows']} sampled rows "
                 f"({ln['suspects_pct']:.2f}%) disagree with the majority of their {ln['k']} nearest neighbours.</p>")
    if ln["examples"]:
        parts.append(table(["shard", "row in shard", "label", "neighbours' majority"],
                           [[e["shard"], e["row"], e["label"], e["neighbours_say"]] for e in ln["examples"]]))
    parts.append("<h2>Methods</h2><ul>" + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>"
                                                  for k, v in r["method"].items()) + "</ul>")
    return "\n".join(parts)


def write_profile_report(out_dir: Path, r: dict, source: str) -> Path:
    from hpctrain.fileio import atomic_write_json

    from hpctrain.quality.io import make_out_dir

    make_out_dir(out_dir)
    images = profile_images(r)
    write_pngs(out_dir, images)
    atomic_write_json(out_dir / "report.json", r)
    page = out_dir / "report.html"
    write_page(page, "hpctrain data profile", profile_html(r, images, source))
    return page
