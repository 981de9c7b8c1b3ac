"""Function tasks that ship with hpctrain, for ``{"fn": "hpctrain.farm.builtin:NAME", ...}``.

The data-pipeline kinds import the modules they drive lazily, inside the function, so
``import hpctrain.farm.builtin`` (done by the task-file validator) stays cheap and works
where those modules' dependencies are missing.
"""

from __future__ import annotations

import time


def noop() -> None:
    """Does nothing: the task used to measure dispatch overhead."""


def sleep(seconds: float) -> None:
    """Sleeps ``seconds``: a stand-in for work of known duration (benchmarks, tests).

    Returns nothing, so no result.json is written: that write is fsynced (~7 ms here) and
    would be measured instead of the dispatch."""
    time.sleep(float(seconds))


def convert_to_shards(input: str, out: str, *, label: str | None = None, shards: int | None = None,
                      rows_per_shard: int | None = None, compression: str = "lzf", seed: int = 0,
                      val_fraction: float = 0.0, shuffle: bool = True, overwrite: bool = False) -> dict:
    """One input file (or built-in spec) to one shard directory, as ``hpctrain shard INPUT --out OUT``.

    A farm of these converts many inputs in parallel, e.g. one task per CSV file. A retry
    after a failed attempt passes ``overwrite`` implicitly: the writer leaves no manifest
    after a failure, and a half-written directory must not block the next attempt.
    """
    from pathlib import Path

    from hpctrain.data.shards import MANIFEST_NAME, Manifest
    from hpctrain.data.sources import write_shards

    out_dir = Path(out)
    if not overwrite and (out_dir / MANIFEST_NAME).exists():
        # Finished before but not journaled (a crash between the two): the farm is
        # at-least-once, so a rerun of the same conversion must be a no-op, not an error.
        m = Manifest.load(out_dir)
        if m.meta.get("source") == input and m.meta.get("seed") == seed:
            return _shard_summary(out_dir, m)
    # A directory without a manifest is, by the shard format's rule, an unfinished write.
    partial = out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).exists()
    m = write_shards(input, out_dir, shards=shards, rows_per_shard=rows_per_shard, label=label,
                     compression=compression, seed=seed, val_fraction=val_fraction, shuffle=shuffle,
                     overwrite=overwrite or partial)
    return _shard_summary(out_dir, m)


def _shard_summary(out_dir, m) -> dict:
    return {"out": str(out_dir), "rows": m.rows(), "shards": len(m.shards), "train_rows": m.rows("train"),
            "val_rows": m.rows("val")}


def profile_shards(dir: str, out: str, *, split: str | None = None, bins: int = 30, sample_size: int = 5000,
                   knn_k: int = 5, seed: int = 0, verify: bool = False) -> dict:
    """Profile one shard directory into ``out`` (report.html, report.json), as ``hpctrain profile``.

    Runs on this worker alone: the statistics use a single-process communicator even though
    the worker is an MPI rank, because the farm's ranks are not in a collective together.
    """
    from pathlib import Path

    from hpctrain.comm.collective import LocalCollective
    from hpctrain.quality.io import load_manifest, local_chunks
    from hpctrain.quality.profile import ProfileConfig, profile_chunks
    from hpctrain.quality.report import write_profile_report

    cfg = ProfileConfig(bins=bins, sample_size=sample_size, knn_k=knn_k, seed=seed)
    m = load_manifest(dir, split)
    r = profile_chunks(local_chunks(m, split, 0, 1, verify=verify), feature_names=list(m.schema.feature_names),
                       total_rows=m.rows(split), comm=LocalCollective(), cfg=cfg,
                       declared_classes=list(m.schema.classes))
    r["source"] = {"dir": str(m.root), "split": split or "all", "ranks": 1}
    files = [s.file for s in m.shards_for(split)]
    for item in r["anomalies"]["top"] + r["label_noise"]["examples"]:
        item["shard"] = files[item["shard"]]
    page = write_profile_report(Path(out), r, str(m.root))
    return {"report": str(page), "rows": m.rows(split)}


def batch_inference(run_dir: str, shards: str, out: str, *, split: str | None = None) -> dict:
    """Predictions of a trained run over a shard directory, as ``hpctrain predict``.

    One task per shard directory (or per split) spreads inference over the farm's workers;
    ``out`` is an .npz written atomically, so a retried task never leaves half a file.
    """
    from hpctrain.predict import predict_shards

    return predict_shards(run_dir, shards, out, split=split)
