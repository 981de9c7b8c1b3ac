"""``hpctrain explain`` on every rank: load the model and the split, explain this rank's chunks
of samples and rows, gather on rank 0, which alone writes explain.json, the PNGs and explain.html."""

from __future__ import annotations

from typing import Callable

import numpy as np

from hpctrain.explain import ExplainError
from hpctrain.explain.options import ATTRIBUTIONS, ExplainOptions


def resolve_methods(requested: tuple[str, ...] | None, attention: bool, run: str) -> tuple[str, ...]:
    """The methods to run: those requested, or every one that applies to the model."""
    if requested is None:
        return ATTRIBUTIONS + ("permutation",) + (("attention",) if attention else ())
    if "attention" in requested and not attention:
        raise ExplainError(f"--method attention: the model of {run!r} records no attention weights (only "
                           "model.kind=attention does); choose ig, saliency, occlusion or permutation")
    return requested


def _load(opts: ExplainOptions):
    from hpctrain.predict import PredictError, load_run

    if not opts.run.exists():
        raise ExplainError(f"run {str(opts.run)!r} does not exist; pass the run.dir of a finished 'hpctrain train' "
                           "run or a model artifact ('hpctrain export')")
    try:
        return load_run(opts.run)
    except PredictError as e:
        raise ExplainError(str(e)) from None


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _local_work(opts: ExplainOptions, trained, rows, methods, rank: int, size: int):
    """This rank's share: attributions of its sample chunks, score sums of its row chunks."""
    import torch

    from hpctrain.explain import inputs
    from hpctrain.explain.attribute import attribute_chunk, occlusion_window
    from hpctrain.explain.permutation import score_sums

    model = trained.model
    model.eval()
    baseline = rows.baseline_mean if opts.baseline == "mean" else np.zeros(trained.sample_shape, dtype=np.float32)
    idx = inputs.choose_samples(len(rows.x), opts.samples, opts.seed)
    window = occlusion_window(tuple(trained.sample_shape), opts.window)
    per_sample = [m for m in methods if m != "permutation"]
    done = []
    for ci, (lo, hi) in inputs.mine(inputs.chunks(len(idx), inputs.SAMPLE_CHUNK), rank, size):
        done.append((ci, attribute_chunk(model, rows.x[idx[lo:hi]], baseline, tuple(per_sample), steps=opts.steps,
                                         window=window, output=0 if trained.regression else None)))
    counts = None
    if "permutation" in methods:
        def forward(xb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))).numpy()

        mine = [c for _, c in inputs.mine(inputs.chunks(len(rows.x), inputs.ROW_CHUNK), rank, size)]
        counts = score_sums(forward, rows.x, rows.y, 0 if trained.regression else len(trained.classes), mine,
                            opts.repeats, opts.seed)
    return idx, baseline, window, done, counts


def explain(opts: ExplainOptions, *, comm=None, echo: Callable[[str], None] = print) -> dict | None:
    """Explain ``opts.run`` on every rank of ``comm`` (default: the ranks this process was
    started with). Rank 0 writes ``opts.out`` and returns the record (explain.json); the other
    ranks return None. Bad input raises ExplainError on every rank (ending the job)."""
    from hpctrain.comm.failfast import run_collective
    from hpctrain.comm.world import as_collective, world

    comm = world() if comm is None else as_collective(comm)

    def body():
        from hpctrain.explain import inputs
        from hpctrain.explain.attribute import has_attention

        if opts.out.exists() and not opts.out.is_dir():
            raise ExplainError(f"--out {str(opts.out)!r} is a file; give a directory (it is created if missing)")
        trained = _load(opts)
        methods = resolve_methods(opts.methods, has_attention(trained.model), str(opts.run))
        if any(m in methods for m in ATTRIBUTIONS):
            from hpctrain.explain.attribute import require_captum

            require_captum()  # a missing extra is one line before any work, not after the permutations
        rows = inputs.load_split(trained, inputs.shard_dir(trained, opts.shards), opts.split)
        idx, baseline, window, done, counts = _local_work(opts, trained, rows, methods, comm.rank, comm.size)
        if counts is not None:
            # confusion counts are integers far below 2**53: their float64 sum over ranks is exact
            # (regression's error sums agree with one rank's to rounding)
            counts = tuple(comm.allreduce(c, "sum") for c in counts)
        gathered = comm.gather(done)
        rec = None
        if comm.rank == 0:
            parts = dict(p for rank_parts in gathered for p in rank_parts)
            chunks = [parts[i] for i in sorted(parts)]
            rec = assemble(opts, trained, rows, methods, idx, baseline, window, chunks, counts, comm.size)
            from hpctrain.explain.page import write_outputs

            write_outputs(opts.out, rec, rows.x[idx])
            echo(summary_line(rec))
        comm.barrier()  # no rank returns (and may exit) before rank 0 has written
        return rec

    return run_collective(comm, body)


def _label(trained, rows, k: int) -> str:
    cid = trained.classes[k]
    names = rows.class_names
    return f"{names[k]}" if names and k < len(names) else str(cid)


def assemble(opts, trained, rows, methods, idx, baseline, window, chunks, counts, ranks: int) -> dict:
    """explain.json: every number shown in the pictures and the page."""
    from hpctrain.explain.permutation import importance

    shape = tuple(int(s) for s in trained.sample_shape)
    n = len(idx)
    outputs = np.concatenate([c.outputs for c in chunks])
    target = np.concatenate([c.target for c in chunks])
    base_out = np.concatenate([c.baseline_output for c in chunks])
    attr = {m: np.concatenate([c.attributions[m] for c in chunks]) for m in ATTRIBUTIONS if m in methods}
    delta = np.concatenate([c.ig_delta for c in chunks]) if "ig" in methods else None
    samples = []
    for i in range(n):
        row = int(idx[i])
        k = int(target[i])
        s = {"index": row, "shard": str(rows.shard_file[row]), "row": int(rows.shard_row[row])}
        if trained.regression:
            label, pred = rows.labels[row], outputs[i]
            s.update(label=np.asarray(label).tolist(), pred=pred.tolist() if pred.size > 1 else float(pred[0]),
                     true_name=" ".join(f"{v:.3g}" for v in np.ravel(label)),
                     pred_name=" ".join(f"{v:.3g}" for v in np.ravel(pred)))
        else:
            proba = _softmax(outputs[i:i + 1])[0]
            s.update(label=int(rows.labels[row]), pred=int(trained.classes[k]),
                     true_name=_label(trained, rows, int(rows.y[row])), pred_name=_label(trained, rows, k),
                     prob=float(proba[k]))
        s.update(outputs=outputs[i].tolist(), target_index=k, target_output=float(outputs[i, k]),
                 baseline_output=float(base_out[i]), input=rows.x[row].reshape(-1).astype(float).tolist(),
                 attributions={m: a[i].reshape(-1).tolist() for m, a in attr.items()})
        if delta is not None:
            gap = outputs[i, k] - base_out[i]
            s["ig_sum"] = float(attr["ig"][i].sum())
            s["ig_delta"] = float(delta[i])
            s["ig_relative_error"] = float(abs(delta[i]) / max(abs(gap), 1e-12))
        samples.append(s)
    rec = {
        "version": 1, "run": str(opts.run), "out": str(opts.out), "checkpoint": str(trained.checkpoint),
        "shards": str(rows.shards),
        "split": opts.split, "rows": int(len(rows.x)), "ranks": int(ranks), "methods": list(methods),
        "model": {"kind": getattr(trained.config.model, "kind", None) if trained.config.model.module is None
                  else trained.config.model.module, "sample_shape": list(shape),
                  "image": len(shape) >= 2, "classes": [int(c) for c in trained.classes], "targets": trained.targets,
                  "class_names": rows.class_names},
        "feature_names": rows.feature_names,
        "task": "regression" if trained.regression else "classification",
        "target": "the first regression output" if trained.regression else "logit of the predicted class",
        "baseline": {"kind": opts.baseline, "source": f"manifest statistics, split {rows.baseline_source}"
                     if opts.baseline == "mean" else "zeros", "values": baseline.reshape(-1).astype(float).tolist()},
        "settings": {"samples": int(n), "seed": opts.seed, "ig_steps": opts.steps, "repeats": opts.repeats,
                     "occlusion_window": list(window[0]), "occlusion_strides": list(window[1])},
        "samples": samples,
        "mean_abs_attribution": {m: np.abs(a).mean(axis=0).reshape(-1).tolist() for m, a in attr.items()},
    }
    if delta is not None and n:
        rec["ig_completeness"] = {"max_relative_error": max(s["ig_relative_error"] for s in samples),
                                  "max_abs_delta": float(np.abs(delta).max())}
    if counts is not None:
        rec["permutation"] = importance(counts[0], counts[1], rows.feature_names, trained.regression)
    if "attention" in methods:
        layers = [np.concatenate([c.attention[li] for c in chunks]) for li in range(len(chunks[0].attention))] \
            if chunks else []
        rec["attention"] = {
            "tokens": ["[CLS]"] + rows.feature_names,
            "layers": len(layers), "heads": int(layers[0].shape[1]) if layers else 0,
            "mean": [a.mean(axis=0).tolist() for a in layers],        # per layer: (heads, T, T) over the samples
            "per_sample": [[a[i].tolist() for a in layers] for i in range(n)],  # per sample, per layer
        }
    return rec


def summary_line(rec: dict) -> str:
    out = [f"explained {rec['settings']['samples']} sample(s) of split {rec['split']!r} ({rec['rows']} rows) with "
           f"{', '.join(rec['methods'])} on {rec['ranks']} rank(s)"]
    if "ig_completeness" in rec:
        out.append(f"IG completeness: max relative error {rec['ig_completeness']['max_relative_error']:.2e}")
    if "permutation" in rec:
        key = rec["permutation"]["primary"]
        top = max(rec["permutation"]["features"], key=lambda f: f[f"{key}_mean"])
        out.append(f"most important (permutation): {top['feature']} ({key.replace('_', ' ')} {top[f'{key}_mean']:.4f})")
    return "; ".join(out) + f"; report: {rec['out']}/explain.html"
