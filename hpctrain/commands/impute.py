"""hpctrain impute fit DIR / hpctrain impute apply DIR --out DIR2"""

HELP = "fit imputation statistics on a shard directory, or write an imputed copy of it"
DESCRIPTION = """Missing-value imputation with scikit-learn SimpleImputer semantics, on numba kernels.

  hpctrain impute fit DIR --strategy median      writes DIR/imputer.json (next to the manifest)
  hpctrain impute apply DIR --out DIR2           writes imputed shards + a new manifest to DIR2;
                                                 DIR is never modified

Strategies: mean, median, most_frequent, constant (--fill-value, default 0). mean and constant
come straight from the manifest's column statistics; median and most_frequent read the shards
(exact; under mpirun the ranks share the shards and merge their statistics).
Training loads DIR/imputer.json with hpctrain.kernels.impute.Imputer.load(DIR).
"""


def add_arguments(p):
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    f = sub.add_parser("fit", help="fit statistics and write DIR/imputer.json")
    f.add_argument("dir", help="shard directory (holds manifest.json)")
    f.add_argument("--strategy", default="mean", choices=["mean", "median", "most_frequent", "constant"])
    f.add_argument("--fill-value", type=float, default=None, help="constant strategy's fill value (default 0)")
    f.add_argument("--keep-empty-features", action="store_true",
                   help="keep features with no observed value (filled with 0, or the constant)")
    f.add_argument("--add-indicator", action="store_true",
                   help="append a 0/1 missing-indicator column per feature that had missing values")
    f.add_argument("--split", default="train", choices=["train", "val", "all"], help="rows to fit on (default train)")
    f.add_argument("--from-data", action="store_true",
                   help="read the shards even for mean/constant instead of the manifest statistics")
    f.add_argument("--out", default=None, help="statistics file (default DIR/imputer.json)")
    a = sub.add_parser("apply", help="write an imputed copy of DIR to --out")
    a.add_argument("dir", help="input shard directory")
    a.add_argument("--out", required=True, help="new shard directory")
    a.add_argument("--stats", default=None, help="statistics file (default DIR/imputer.json)")
    a.add_argument("--force", action="store_true", help="replace an existing shard directory at --out")
    a.add_argument("--verify", action="store_true", help="check each shard's sha256 before reading it")


def _comm():
    from hpctrain.env import rank_info

    if rank_info().world_size <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def fit_dir(src, *, strategy="mean", fill_value=None, keep_empty_features=False, add_indicator=False,
            split="train", from_data=False, out=None, comm=None):
    """Fit on shard directory ``src``; rank 0 writes the statistics. Returns (imputer, path)."""
    from hpctrain.kernels.impute import Imputer

    imp = Imputer(strategy=strategy, fill_value=fill_value, keep_empty_features=keep_empty_features,
                  add_indicator=add_indicator)
    imp.fit(src, comm=comm, split=None if split == "all" else split, from_manifest=not from_data)
    path = imp.save(out or src, comm=comm)
    return imp, path


def _out_layout(m, imp):
    """(feature names, sample shape) of the imputed output."""
    from hpctrain.kernels.impute import ImputeError

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


def apply_dir(src, out, *, stats=None, force=False, verify=False):
    """Write the imputed copy of ``src`` to ``out``; returns the new Manifest."""
    from pathlib import Path

    from hpctrain.data.shards import Manifest, ShardWriter, iter_arrays
    from hpctrain.kernels.impute import ImputeError, Imputer

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


def run(args):
    comm = _comm() if args.verb == "fit" else None
    try:
        if args.verb == "fit":
            imp, path = fit_dir(args.dir, strategy=args.strategy, fill_value=args.fill_value,
                                keep_empty_features=args.keep_empty_features, add_indicator=args.add_indicator,
                                split=args.split, from_data=args.from_data, out=args.out, comm=comm)
            if comm is None or comm.Get_rank() == 0:
                dropped = int(sum(1 for v in imp.statistics_ if v != v))
                print(f"fitted {args.strategy} on {imp.source.get('rows')} rows "
                      f"({imp.source.get('from')}); {imp.n_features_in_} features, {dropped} empty "
                      f"{'kept' if imp.keep_empty_features else 'dropped'}; wrote {path}")
            return 0
        m = apply_dir(args.dir, args.out, stats=args.stats, force=args.force, verify=args.verify)
        print(f"wrote {m.rows()} imputed rows in {len(m.shards)} shards to {args.out}")
        return 0
    except Exception as e:
        if comm is not None and comm.Get_size() > 1:
            # one failing rank would leave the others blocked in a collective: take them all down
            import sys

            print(f"hpctrain impute: rank {comm.Get_rank()}: error: {e}", file=sys.stderr, flush=True)
            comm.Abort(2)
        raise
