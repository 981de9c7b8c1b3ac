"""The drift check as a library call: the data verdict (KS + Bonferroni, PSI) over shard
sets on every rank, or the model verdict of a run on new labelled data; the report files
and the --on-drift hook. ``hpctrain drift`` parses its arguments into :class:`DriftArgs`
and calls :func:`run_drift`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

from hpctrain.quality import QualityError


@dataclasses.dataclass(kw_only=True, slots=True)
class DriftArgs:
    dirs: list[str]  # [REF_DIR, CUR_DIR], or [CUR_DIR] with ``model``
    model: str | None = None  # a run directory: model-level drift
    out: str = "drift-report"
    ref_split: str | None = None
    cur_split: str | None = None
    alpha: float = 0.05  # family-wise KS level before Bonferroni
    bins: int = 10  # PSI bins from reference quantiles
    max_share: float = 0.0  # drift when the share of drifted features exceeds this
    top: int = 6  # features to plot
    metric: str | None = None  # model drift: metric name in result.json (default val accuracy)
    tolerance: float = 0.02  # model drift: allowed metric drop
    on_drift: str | None = None  # a command to run (no shell) when drift is found; rank 0 only


DRIFT_EXIT = 3


def data_drift(a: DriftArgs, comm) -> dict | None:
    """The drift record on rank 0 (None elsewhere); every rank takes part."""
    import numpy as np

    from hpctrain.fileio import atomic_write_json
    from hpctrain.quality.drift import check_psi_bins, drift_share, feature_drift, most_drifted
    from hpctrain.quality.io import check_out_dir, check_same_schema, load_manifest, local_chunks, make_out_dir

    if len(a.dirs) != 2:
        raise QualityError(f"drift takes REF_DIR CUR_DIR (or --model RUN CUR_DIR); got {len(a.dirs)} "
                           f"director{'y' if len(a.dirs) == 1 else 'ies'}: {a.dirs}")
    if not 0 < a.alpha < 1:
        raise QualityError(f"--alpha {a.alpha}: expected a level between 0 and 1")
    check_psi_bins(a.bins)
    if a.top < 1:
        raise QualityError(f"--top {a.top}: expected at least 1 feature to plot")
    if not 0 <= a.max_share < 1:
        raise QualityError(f"--max-share {a.max_share}: expected a share of features in [0, 1); 0 reports drift "
                           "when any feature drifts")
    ref = load_manifest(a.dirs[0], a.ref_split, "reference shard directory")
    cur = load_manifest(a.dirs[1], a.cur_split, "current shard directory")
    check_same_schema(ref, cur)
    check_out_dir(a.out, ref, cur)
    names = list(ref.schema.feature_names)

    def local(m, split):
        xs = [x for _i, x, _y in local_chunks(m, split, comm.rank, comm.size)]
        return np.concatenate(xs) if xs else np.zeros((0, len(names)), dtype=np.float32)

    lr, lc = local(ref, a.ref_split), local(cur, a.cur_split)
    # One column at a time on rank 0: memory there is two columns, not two datasets.
    results, keep = [], {}
    for j, name in enumerate(names):
        gr, gc = comm.gather(lr[:, j]), comm.gather(lc[:, j])
        if comm.rank == 0:
            r, c = np.concatenate(gr), np.concatenate(gc)
            fd = feature_drift([name], [r], [c], alpha=a.alpha, bins=a.bins)[0]
            fd.ks_drift = bool(fd.ks_pvalue < a.alpha / len(names)) if np.isfinite(fd.ks_pvalue) else False
            fd.drifted = fd.ks_drift or fd.psi_level == "major" or fd.vanished
            results.append(fd)
            keep[name] = (r, c)
            top = {t.name for t in most_drifted(results, a.top)}
            keep = {k: v for k, v in keep.items() if k in top}
    if comm.rank != 0:
        return None
    share = drift_share(results)
    drift = share > a.max_share
    top = most_drifted(results, a.top)
    out = make_out_dir(a.out)
    rec = {
        "kind": "data", "reference": str(ref.root), "current": str(cur.root),
        "ref_split": a.ref_split or "all", "cur_split": a.cur_split or "all",
        "ref_rows": ref.rows(a.ref_split), "cur_rows": cur.rows(a.cur_split),
        "alpha": a.alpha, "bonferroni_alpha": a.alpha / len(names), "psi_bins": a.bins,
        "psi_thresholds": {"moderate": 0.1, "major": 0.25}, "max_share": a.max_share,
        "drifted_share": share, "drift": bool(drift), "drifted_features": [r.name for r in results if r.drifted],
        "features": [_jsonable(r.to_json() | _missing(r, ref.rows(a.ref_split), cur.rows(a.cur_split)))
                     for r in results],
    }
    _write_drift_plots(out, rec, [(t.name, *keep[t.name], "finite values in one set only" if t.vanished
                                   else f"KS {t.ks_stat:.3f}, PSI {t.psi:.3f}") for t in top])
    atomic_write_json(out / "drift.json", rec)
    return rec


def _missing(r, ref_rows: int, cur_rows: int) -> dict:
    # KS and PSI see finite values only; a change in how often a feature is missing is reported
    # beside them (not part of the verdict), since it is often the first sign of a broken pipeline
    return {"ref_nonfinite_pct": 100.0 * (1 - r.ref_count / max(ref_rows, 1)),
            "cur_nonfinite_pct": 100.0 * (1 - r.cur_count / max(cur_rows, 1))}


def _jsonable(d: dict) -> dict:
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _write_drift_plots(out, rec, panels) -> None:
    import html

    from hpctrain.quality.report import img_tag, plot_drift, table, write_page, write_pngs

    esc = html.escape
    png = plot_drift(panels)
    write_pngs(out, {"drift": png})
    rows = [[f["name"], f["ks_stat"], f["ks_pvalue"], f["psi"], f["psi_level"], "yes" if f["drifted"] else "",
             f["ref_nonfinite_pct"], f["cur_nonfinite_pct"]] for f in rec["features"]]
    body = (f"<p>Reference <code>{esc(rec['reference'])}</code> (split {esc(rec['ref_split'])}, "
            f"{rec['ref_rows']} rows) against current <code>{esc(rec['current'])}</code> "
            f"(split {esc(rec['cur_split'])}, {rec['cur_rows']} rows).</p>"
            f"<p><b>{'DRIFT' if rec['drift'] else 'no drift'}</b>: {len(rec['drifted_features'])} of "
            f"{len(rec['features'])} features drifted (share {rec['drifted_share']:.3f}, threshold "
            f"{rec['max_share']}). A feature drifts when its KS p-value is below alpha {rec['alpha']} / "
            f"{len(rec['features'])} features (Bonferroni) or its PSI over {rec['psi_bins']} reference-quantile bins "
            f"is at least 0.25 (major; 0.1 is moderate).</p>" + img_tag(png, "most drifted features")
            + table(["feature", "KS statistic", "KS p-value", "PSI", "PSI level", "drifted",
                    "missing % (reference)", "missing % (current)"], rows))
    write_page(out / "drift.html", "hpctrain drift report", body)


def hook_argv(cmd: str) -> list[str]:
    """The --on-drift command split like a shell would; checked before any data is read, so a
    typo fails at once instead of after the drift test (when the hook is needed)."""
    import shlex
    import shutil


    try:
        argv = shlex.split(cmd)
    except ValueError as e:
        raise QualityError(f"--on-drift {cmd!r}: cannot be split into words ({e}); check the quoting") from None
    if not argv:
        raise QualityError("--on-drift is empty; give the command to run, e.g. --on-drift 'sbatch retrain.sbatch'")
    if shutil.which(argv[0]) is None:
        raise QualityError(f"--on-drift {cmd!r}: {argv[0]!r} is not an executable on PATH (the command runs without a "
                           "shell: for pipes or ';' use --on-drift \"bash -c '...'\")")
    return argv


def on_drift(cmd: str, echo: Callable[[str], None] = print) -> int:
    import shlex
    import subprocess


    argv = hook_argv(cmd)
    echo(f"drift: running {shlex.join(argv)}")
    sys.stdout.flush()  # the command writes to the same stdout: our line must come first
    try:
        return subprocess.run(argv, check=False).returncode
    except OSError as e:
        raise QualityError(f"--on-drift {cmd!r}: could not start {argv[0]!r} ({e}); check the command and PATH") \
            from None


def run_drift(a: DriftArgs, *, comm=None, echo: Callable[[str], None] = print) -> int:
    """Check drift on every rank of ``comm`` (default: the ranks this process was started
    with); rank 0 writes the report and prints through ``echo``. Returns the exit status:
    0 no drift, DRIFT_EXIT drift; bad input raises QualityError (ending every rank)."""
    from hpctrain.comm.failfast import run_collective
    from hpctrain.comm.world import as_collective, world

    if a.on_drift is not None:
        hook_argv(a.on_drift)
    comm = world() if comm is None else as_collective(comm)

    def body() -> int:
        if a.model is not None:
            from hpctrain.quality.model_drift import model_drift

            rec = model_drift(a) if comm.rank == 0 else None
        else:
            rec = data_drift(a, comm)
        rc = 0
        if comm.rank == 0:
            if rec["kind"] == "data":
                echo(f"drifted features: {len(rec['drifted_features'])}/{len(rec['features'])} "
                      f"(share {rec['drifted_share']:.3f}); {'DRIFT' if rec['drift'] else 'no drift'}")
                drifted = [f for f in rec["features"] if f["drifted"]]
                if len(drifted) > 10:
                    echo(f"  (showing the 10 of {len(drifted)} drifted features with the largest KS statistic; "
                          "all are in drift.json)")
                    # a vanished feature has no KS statistic (null) and comes first: it is the worst case
                    drifted = sorted(drifted, key=lambda f: -2.0 if f["ks_stat"] is None else -f["ks_stat"])[:10]
                for f in drifted:
                    if f["vanished"]:
                        echo(f"  {f['name']}: finite values in one set only (reference {f['ref_count']}, current "
                              f"{f['cur_count']})")
                    else:
                        echo(f"  {f['name']}: KS {f['ks_stat']:.4f} (p={f['ks_pvalue']:.3g}), PSI {f['psi']:.4f} "
                              f"({f['psi_level']})")
                moved = [f"{f['name']} {f['ref_nonfinite_pct']:.1f}% -> {f['cur_nonfinite_pct']:.1f}%"
                         for f in rec["features"] if abs(f["cur_nonfinite_pct"] - f["ref_nonfinite_pct"]) > 5]
                if moved:
                    echo("note: the share of missing values moved by more than 5 points (not part of the verdict): "
                          + ", ".join(moved[:8]) + (f" and {len(moved) - 8} more" if len(moved) > 8 else ""))
            else:
                echo(rec["message"])
            if rec["kind"] == "data":
                echo(f"report: {a.out}/drift.html (also drift.json, drift.png)")
            else:
                echo(f"report: {a.out}/drift.json")
            if rec["drift"]:
                rc = DRIFT_EXIT
                if a.on_drift:
                    hook = on_drift(a.on_drift, echo)
                    echo(f"drift: --on-drift command exited {hook}")
        return comm.broadcast(rc)

    return run_collective(comm, body)
