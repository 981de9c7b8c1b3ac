"""hpctrain balance DIR --out DIR2 --method oversample|undersample|smote"""

HELP = "write a class-balanced copy of a shard directory (random over/under-sampling or SMOTE)"
DESCRIPTION = """Resample the train split of DIR into DIR2 (DIR is never modified); the val split is
copied unchanged, since a rebalanced validation set no longer measures the real distribution.

Class counts match imbalanced-learn's RandomOverSampler / RandomUnderSampler:
  oversample / smote    every class grows to the majority count, or with --ratio R to int(R * majority)
  undersample           every class shrinks to the minority count, or with --ratio R to int(minority / R)
SMOTE points lie on segments between a class row and one of its --k nearest same-class rows.

  hpctrain balance shards/ --out shards-bal --method smote --seed 1
"""


def add_arguments(p):
    p.add_argument("dir", help="input shard directory")
    p.add_argument("--out", required=True, help="new shard directory")
    p.add_argument("--method", required=True, choices=["oversample", "undersample", "smote"])
    p.add_argument("--ratio", type=float, default=None, help="minority/majority share after balancing, 0 < R <= 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5, help="SMOTE neighbours (default 5)")
    p.add_argument("--force", action="store_true", help="replace an existing shard directory at --out")
    p.add_argument("--verify", action="store_true", help="check each shard's sha256 before reading it")


def balance_dir(src, out, method, *, ratio=None, seed=0, k=5, force=False, verify=False, notes=None):
    """Write the balanced copy; returns the train class counts before and after. ``notes``
    (a list) receives a line per class where SMOTE had to use fewer than ``k`` neighbours."""
    from hpctrain.quality import check_seed
    from hpctrain.quality.balance import balance_arrays
    from hpctrain.quality.io import load_manifest, read_all, splits_present, writer_for

    check_seed(seed)
    m = load_manifest(src, "train", what="shard directory (train split)")
    x, y = read_all(m, "train", verify=verify)
    xb, yb, before, after = balance_arrays(x, y, method, ratio, seed, k, notes=notes)
    meta = {"balanced_from": str(m.root), "balance": {"method": method, "ratio": ratio, "seed": seed,
                                                      "before": {str(c): n for c, n in before.items()},
                                                      "after": {str(c): n for c, n in after.items()}}}
    with writer_for(m, out, meta=meta, force=force) as w:
        w.add(xb, yb, split="train")
        if "val" in splits_present(m, None):
            xv, yv = read_all(m, "val", verify=verify)
            w.add(xv, yv, split="val")
    return before, after


def run(args):
    from hpctrain.secure.cliargs import refuse_encrypted_input

    refuse_encrypted_input(args.dir, "balance")
    from hpctrain.comm.world import world
    from hpctrain.comm.failfast import run_collective

    from hpctrain.quality import QualityError, check_seed

    if args.k < 1:
        raise QualityError(f"--k {args.k}: SMOTE needs at least 1 neighbour (default 5)")
    check_seed(args.seed)
    comm = world()

    def body() -> int:
        if comm.rank == 0:
            notes: list[str] = []
            before, after = balance_dir(args.dir, args.out, args.method, ratio=args.ratio, seed=args.seed, k=args.k,
                                        force=args.force, verify=args.verify, notes=notes)
            for line in notes:
                print(f"note: {line}")
            print(f"train class counts before: {before} ({sum(before.values())} rows)")
            print(f"train class counts after:  {after} ({sum(after.values())} rows)")
            print(f"wrote {args.out} (method {args.method}; the val split, if any, is copied unchanged)")
        comm.barrier()
        return 0

    return run_collective(comm, body)
