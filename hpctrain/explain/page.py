"""explain.json, the PNGs and the self-contained explain.html (every picture embedded as a data
URI, so the page opens from the directory, a mail or a job's output, with no server).
The page shell (and its images-loaded marker for the browser test) is the quality report's."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from hpctrain.explain import plots

SAMPLE_PICTURES = 16   # samples drawn in the image grid
SAMPLE_TABLES = 20     # tabular samples shown as tables on the page
TABLE_FEATURES = 10    # features per sample table (the largest |attribution| first)
TABLE_ROWS = 50        # permutation-importance rows on the page


def images(rec: dict, x: np.ndarray) -> dict[str, bytes]:
    """name -> PNG; ``x`` holds the explained samples' inputs, (n, *sample_shape)."""
    out: dict[str, bytes] = {}
    names = rec["feature_names"]
    if "permutation" in rec:
        feats = rec["permutation"]["features"]
        key = rec["permutation"]["primary"]
        out["permutation"] = plots.bar_chart(
            names, np.array([f[f"{key}_mean"] for f in feats]),
            f"permutation importance ({rec['split']}, {rec['permutation']['repeats']} repeats)",
            f"{_metric_label(key)} (mean, bars: std over repeats)", np.array([f[f"{key}_std"] for f in feats]))
    for m, v in rec["mean_abs_attribution"].items():
        out[f"attribution_{m}"] = plots.bar_chart(names, np.array(v), f"mean |{m}| per feature "
                                                  f"({rec['settings']['samples']} samples)", f"mean |{m}|")
    shape = tuple(rec["model"]["sample_shape"])
    samples = rec["samples"]
    if rec["model"]["image"] and samples:
        maps = {m: np.array(v).reshape(shape) for m, v in rec["mean_abs_attribution"].items()}
        if maps:
            out["attribution_maps"] = plots.mean_maps(maps)
        k = min(len(samples), SAMPLE_PICTURES)
        shown = {m: np.array([s["attributions"][m] for s in samples[:k]]).reshape((k,) + shape)
                 for m in ("saliency", "ig") if m in rec["mean_abs_attribution"]}
        titles = [f"true {s['true_name']}, pred {s['pred_name']}" for s in samples[:k]]
        out["samples"] = plots.image_grid(x[:k].reshape((k,) + shape), shown, titles)
    if rec.get("attention", {}).get("layers"):
        out["attention"] = plots.attention_maps([np.array(a) for a in rec["attention"]["mean"]],
                                                rec["attention"]["tokens"])
    return out


def _metric_label(key: str) -> str:
    """``macro_f1_drop`` -> ``macro-F1 drop``."""
    return key.replace("macro_f1", "macro-F1").replace("r2", "R^2").replace("mse", "MSE").replace("_", " ")


def _sample_tables(rec: dict) -> str:
    from hpctrain.quality.report import table

    methods = list(rec["mean_abs_attribution"])
    if not methods:
        return ""
    names = rec["feature_names"]
    parts = []
    for s in rec["samples"][:SAMPLE_TABLES]:
        lead = np.abs(np.array(s["attributions"][methods[0]]))
        order = np.argsort(-lead, kind="stable")[:TABLE_FEATURES]
        rows = [[names[j], s["input"][j]] + [s["attributions"][m][j] for m in methods] for j in order]
        head = f"row {s['row']} of {s['shard']}: true {s['true_name']}, predicted {s['pred_name']}"
        if "prob" in s:
            head += f" (p={s['prob']:.3f})"
        parts.append(f"<h3>{html.escape(head)}</h3>" + table(["feature", "value"] + methods, rows))
    more = len(rec["samples"]) - SAMPLE_TABLES
    if more > 0:
        parts.append(f"<p>{more} more sample(s) in explain.json.</p>")
    return "\n".join(parts)


def html_body(rec: dict, pngs: dict[str, bytes]) -> str:
    from hpctrain.quality.report import img_tag, table

    esc = html.escape
    s = rec["settings"]
    facts = [["run", rec["run"]], ["checkpoint", rec["checkpoint"]], ["shards", rec["shards"]],
             ["split", f"{rec['split']} ({rec['rows']} rows)"], ["model", f"{rec['model']['kind']}, sample shape "
                                                                     f"{tuple(rec['model']['sample_shape'])}"],
             ["methods", ", ".join(rec["methods"])], ["explained samples", s["samples"]],
             ["attributions of", rec["target"]],
             ["baseline (IG, occlusion)", f"{rec['baseline']['kind']}: {rec['baseline']['source']}"],
             ["IG steps", s["ig_steps"]], ["occlusion window", str(tuple(s["occlusion_window"]))],
             ["ranks", rec["ranks"]]]
    if "ig_completeness" in rec:
        facts.append(["IG completeness (max |sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|)",
                      f"{rec['ig_completeness']['max_relative_error']:.3g}"])
    out = ["<h2>Summary</h2>", table(["", "value"], facts, left=2)]
    if "permutation" in rec:
        p = rec["permutation"]
        keys = [p["primary"]] + [k[:-5] for k in p["features"][0] if k.endswith("_mean") and
                                 k[:-5] != p["primary"]]
        unshuffled = ", ".join(f"{_metric_label(m)} {v:.4f}" for m, v in p["base"].items())
        out += ["<h2>Permutation importance</h2>",
                f"<p>Loss of score when one feature is shuffled over the {p['rows']} rows of split "
                f"{esc(rec['split'])}: mean and standard deviation over {p['repeats']} shuffles. Unshuffled: "
                f"{esc(unshuffled)}.</p>", img_tag(pngs["permutation"], "permutation importance")]
        feats = sorted(p["features"], key=lambda f: -f[f"{p['primary']}_mean"])[:TABLE_ROWS]
        header = ["feature"] + [h for k in keys for h in (_metric_label(k), "std")]
        out.append(table(header, [[f["feature"]] + [v for k in keys for v in (f[f"{k}_mean"], f[f"{k}_std"])]
                                  for f in feats]))
        if len(p["features"]) > TABLE_ROWS:
            out.append(f"<p>The {TABLE_ROWS} largest of {len(p['features'])}; every feature is in explain.json.</p>")
    attr = [m for m in rec["mean_abs_attribution"]]
    if attr:
        out.append("<h2>Mean |attribution| per feature</h2>")
        out += [img_tag(pngs[f"attribution_{m}"], f"mean |{m}|") for m in attr]
        if "attribution_maps" in pngs:
            out.append(img_tag(pngs["attribution_maps"], "mean |attribution| per pixel"))
        out.append("<h2>Per sample</h2>")
        if "samples" in pngs:
            out += ["<p>Input, then the input with |saliency| and |IG| overlaid; titles give the true and the "
                    "predicted label.</p>", img_tag(pngs["samples"], "samples with saliency and IG")]
        else:
            out.append(_sample_tables(rec))
    if "attention" in pngs:
        out += ["<h2>Attention</h2>",
                f"<p>Attention weights per layer and head, averaged over the {s['samples']} explained samples "
                "(row: the token that attends; column: the token attended to; each row sums to 1). Per-sample "
                "maps are in explain.json.</p>", img_tag(pngs["attention"], "attention maps")]
    return "\n".join(out)


def write_outputs(out: Path, rec: dict, x: np.ndarray) -> Path:
    """Write explain.json, NAME.png for each picture and explain.html into ``out`` (rank 0 only)."""
    from hpctrain.fileio import atomic_write_json
    from hpctrain.quality.report import write_page, write_pngs

    from hpctrain.explain import ExplainError

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplainError(f"--out {str(out)!r}: cannot create it ({e.strerror}); choose a writable directory") \
            from None
    pngs = images(rec, x)
    rec["images"] = {name: f"{name}.png" for name in pngs}
    write_pngs(out, pngs)
    atomic_write_json(out / "explain.json", rec)
    page = out / "explain.html"
    write_page(page, f"hpctrain explain: {rec['run']}", html_body(rec, pngs))
    return page
