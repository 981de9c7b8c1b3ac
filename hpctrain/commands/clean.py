"""hpctrain clean DIR --out DIR2 [steps]"""

HELP = "write a cleaned copy of a shard directory (duplicates, missing, outliers, denoise, label noise)"
DESCRIPTION = """Write a cleaned copy of DIR to DIR2 (DIR is never modified) and report exactly how many
rows each step removed or changed. Steps run in this order, each split (train, val) on its own:

  --drop-duplicates              rows identical in features and label (first kept)
  --drop-rows-missing-over F     rows with more than a fraction F of missing values
  --outliers clip|drop --method iqr|zscore
                                 values outside the IQR (1.5) or robust-z (3.5) fences
  --denoise median3              3x3 median filter per image channel
  --drop-label-noise             rows whose label differs from most of their 5 nearest rows

The data of one split is held in memory on rank 0 (rows x features x 4 bytes).

  hpctrain clean shards/ --out shards-clean --drop-duplicates --outliers clip --method iqr
"""


def add_arguments(p):
    p.add_argument("dir", help="input shard directory")
    p.add_argument("--out", required=True, help="new shard directory")
    p.add_argument("--drop-duplicates", action="store_true")
    p.add_argument("--outliers", choices=["clip", "drop"], default=None)
    p.add_argument("--method", choices=["iqr", "zscore"], default=None, help="outlier fences (default iqr)")
    p.add_argument("--drop-rows-missing-over", type=float, default=None, metavar="F")
    p.add_argument("--denoise", choices=["median3"], default=None)
    p.add_argument("--drop-label-noise", action="store_true")
    p.add_argument("--knn-k", type=int, default=5, help="neighbours of the label-noise vote (default 5)")
    p.add_argument("--force", action="store_true", help="replace an existing shard directory at --out")
    p.add_argument("--verify", action="store_true", help="check each shard's sha256 before reading it")


def clean_dir(src, out, plan, *, force=False, verify=False):
    """Clean every split of ``src`` into the new directory ``out``; returns {split: [StepCount]}."""
    from hpctrain.quality.clean import clean_arrays
    from hpctrain.quality.io import load_manifest, read_all, splits_present, writer_for

    m = load_manifest(src)
    results, data = {}, {}
    for split in splits_present(m, None):
        x, y = read_all(m, split, verify=verify)
        xc, yc, steps = clean_arrays(x, y, plan, m.schema.sample_shape)
        if len(xc) == 0:
            from hpctrain.quality import QualityError

            raise QualityError(f"cleaning removed every row of split {split!r} of {str(src)!r} "
                               f"({[s.to_json() for s in steps]}); relax the thresholds")
        results[split], data[split] = steps, (xc, yc)
    meta = {"cleaned_from": str(m.root),
            "clean": {s: [c.to_json() for c in steps] for s, steps in results.items()}}
    with writer_for(m, out, meta=meta, force=force) as w:
        for split, (xc, yc) in data.items():
            w.add(xc, yc, split=split)
    return results


def run(args):
    from hpctrain.secure.cliargs import refuse_encrypted_input

    refuse_encrypted_input(args.dir, "clean")
    from hpctrain.quality import QualityError
    from hpctrain.quality.clean import CleanPlan
    from hpctrain.comm.world import world
    from hpctrain.comm.failfast import run_collective

    if args.method is not None and args.outliers is None:
        raise QualityError(f"--method {args.method} chooses the outlier fences, but no --outliers clip|drop was given; "
                           "add --outliers, or drop --method")
    plan = CleanPlan(drop_duplicates=args.drop_duplicates, drop_rows_missing_over=args.drop_rows_missing_over,
                     outliers=args.outliers, method=args.method or "iqr", denoise=args.denoise,
                     drop_label_noise=args.drop_label_noise, knn_k=args.knn_k)
    if plan.is_empty():
        raise QualityError("clean: no step chosen; pass at least one of --drop-duplicates, --outliers, "
                           "--drop-rows-missing-over, --denoise, --drop-label-noise")
    comm = world()

    def body() -> int:
        # Cleaning needs whole-split views (duplicates, neighbours); rank 0 does it, others wait.
        if comm.rank == 0:
            results = clean_dir(args.dir, args.out, plan, force=args.force, verify=args.verify)
            totals = []
            for split, steps in results.items():
                for s in steps:
                    print(f"{split}: {s.step}: {s.rows_in} rows in, removed {s.rows_removed}, "
                          f"changed {s.rows_changed} rows / {s.values_changed} values")
                if steps:
                    totals.append(f"{split} {steps[0].rows_in} -> {steps[-1].rows_in - steps[-1].rows_removed} rows")
            print(f"wrote {args.out}: {', '.join(totals)} (counts also in its manifest.json, meta.clean)")
        comm.barrier()
        return 0

    return run_collective(comm, body)
