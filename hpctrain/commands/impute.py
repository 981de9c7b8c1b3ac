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
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(f, key_help="key file of encrypted shards")
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


def run(args):
    from hpctrain.impute import apply_dir, fit_dir
    from hpctrain.secure.cliargs import apply, refuse_encrypted_input

    apply(args)
    if args.verb == "apply":
        refuse_encrypted_input(args.dir, "impute apply")

    if args.verb == "fit":
        from hpctrain.env import rank_info

        imp, path = fit_dir(args.dir, strategy=args.strategy, fill_value=args.fill_value,
                            keep_empty_features=args.keep_empty_features, add_indicator=args.add_indicator,
                            split=args.split, from_data=args.from_data, out=args.out)
        if rank_info().rank == 0:
            dropped = int(sum(1 for v in imp.statistics_ if v != v))
            print(f"fitted {args.strategy} on {imp.source.get('rows')} rows "
                  f"({imp.source.get('from')}); {imp.n_features_in_} features, {dropped} empty "
                  f"{'kept' if imp.keep_empty_features else 'dropped'}; wrote {path}")
        return 0
    m = apply_dir(args.dir, args.out, stats=args.stats, force=args.force, verify=args.verify)
    print(f"wrote {m.rows()} imputed rows in {len(m.shards)} shards to {args.out}")
    return 0
