"""Imputation over a shard directory: fit the statistics (on every rank of a job) and write
an imputed copy. The estimator is :class:`hpctrain.kernels.impute.Imputer`; the CLI is
``hpctrain impute`` (hpctrain/commands/impute.py), which only parses and prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpctrain.errors import ImputeError
from hpctrain.kernels.impute import Imputer

__all__ = ["apply_dir", "fit_dir"]


def fit_dir(src: str | os.PathLike, *, strategy: str = "mean", fill_value: float | None = None,
            keep_empty_features: bool = False, add_indicator: bool = False, split: str = "train",
            from_data: bool = False, out: str | os.PathLike | None = None, comm=None) -> tuple[Imputer, Path]:
    """Fit on shard directory ``src`` over the ranks of ``comm`` (default: every rank this
    process was started with); rank 0 writes the statistics. Returns (imputer, path).

    An error on any rank ends every rank (:func:`hpctrain.comm.failfast.run_collective`)."""
    from hpctrain.comm.world import as_collective, world
    from hpctrain.comm.failfast import run_collective

    c = world() if comm is None else as_collective(comm)

    def body() -> tuple[Imputer, Path]:
        imp = Imputer(strategy=strategy, fill_value=fill_value, keep_empty_features=keep_empty_features,
                      add_indicator=add_indicator)
        imp.fit(src, comm=c, split=None if split == "all" else split, from_manifest=not from_data)
        return imp, imp.save(out or src, comm=c)

    return run_collective(c, body)



def _out_layout(m, imp: Imputer):
    """(feature names, sample shape) of the imputed output."""
    keep, _, ind, identity = imp.plan()
    names = m.schema.feature_names
    if identity:
        return names, m.schema.sample_shape
    if len(m.schema.sample_shape) > 1:
        raise ImputeError(f"imputing {str(m.root)!r} would drop {imp.n_features_in_ - len(keep)} empty feature(s) "
                          f"or add indicator columns, which does not fit sample shape {m.schema.sample_shape}; "
                          "re-fit with --keep-empty-features and without --add-indicator")
    out_names = [names[k] for k in keep] + [f"missing_{names[k]}" for k in ind]
    return out_names, (len(out_names),)


def apply_dir(src: str | os.PathLike, out: str | os.PathLike, *, stats: str | os.PathLike | None = None,
              force: bool = False, verify: bool = False):
    """Write the imputed copy of ``src`` to ``out`` (one process); returns the new Manifest."""
    from hpctrain.data.shards import Manifest, ShardWriter, iter_arrays

    m = Manifest.load(src)
    dst, root = Path(out).resolve(), m.root.resolve()
    if dst == root or root in dst.parents:
        where = "the input directory" if dst == root else "inside the input directory"
        raise ImputeError(f"--out {str(out)!r} is {where} {str(m.root)!r}; impute apply never modifies its input: "
                          "choose a directory outside it")
    imp = Imputer.load(stats or m.root)
    if imp.n_features_in_ != m.schema.n_features:
        raise ImputeError(f"the statistics were fitted on {imp.n_features_in_} features, {str(m.root)!r} has "
                          f"{m.schema.n_features}; re-run 'hpctrain impute fit {src}'")
    fitted_names = imp.source.get("feature_names")
    if isinstance(fitted_names, list) and fitted_names != list(m.schema.feature_names):
        pairs = list(zip(fitted_names, m.schema.feature_names, strict=False))
        i = next((k for k, (a, b) in enumerate(pairs) if a != b), len(pairs))
        seen = f"{pairs[i][0]!r} there, {pairs[i][1]!r} here" if i < len(pairs) else "a different count"
        raise ImputeError(f"the statistics were fitted on other features than {str(m.root)!r} has (feature {i}: "
                          f"{seen}); re-run 'hpctrain impute fit {src}'")
    names, shape = _out_layout(m, imp)
    rows_per_shard = m.meta.get("rows_per_shard")
    meta = {"imputed_from": str(m.root), "imputer": imp.to_json()}
    with ShardWriter(out, feature_names=names, sample_shape=shape, rows_per_shard=rows_per_shard,
                     compression=m.meta.get("compression", "lzf"), classes=m.schema.classes,
                     class_names=m.schema.class_names, meta=meta, overwrite=force) as w:
        for info, x, y in iter_arrays(m, None, verify=verify):
            filled = imp.transform(x.reshape(len(x), -1), copy=False)
            w.add(filled.reshape((len(x), *shape)), y, split=info.split)
        return w.close()
