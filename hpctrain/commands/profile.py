"""hpctrain profile DIR --out REPORT_DIR"""

HELP = "profile a shard directory: statistics, outliers, duplicates, anomalies, label noise; HTML report"
DESCRIPTION = """Profile the shards of DIR and write REPORT_DIR/report.html (self-contained, plots
embedded), report.json and the PNG plots. Under MPI (hpctrain launch -n N -- hpctrain profile ...)
each rank reads every N-th shard and the statistics are merged exactly; the result does not
depend on N. Prints a short summary with the warnings and their thresholds.

  hpctrain profile shards/ --out reports/profile
"""


def add_arguments(p):
    p.add_argument("dir", help="shard directory (holds manifest.json)")
    p.add_argument("--out", required=True, help="report directory (created; files in it are replaced)")
    p.add_argument("--split", choices=["train", "val"], default=None, help="profile one split (default: all)")
    p.add_argument("--bins", type=int, default=30, help="histogram bins (default 30)")
    p.add_argument("--sample-size", type=int, default=5000,
                   help="rows sampled for IsolationForest and the kNN label-noise vote (default 5000)")
    p.add_argument("--knn-k", type=int, default=5, help="neighbours in the label-noise vote (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the forest (default 0)")
    p.add_argument("--verify", action="store_true", help="check each shard's sha256 before reading it")
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(p, key_help="key file of encrypted shards")


def run(args):
    from pathlib import Path

    from hpctrain.comm.world import world
    from hpctrain.comm.failfast import run_collective
    from hpctrain.quality.io import check_out_dir, load_manifest, local_chunks
    from hpctrain.quality.profile import ProfileConfig, profile_chunks, summary_lines

    from hpctrain.secure.cliargs import apply

    apply(args)  # every rank loads the key itself
    cfg = ProfileConfig(bins=args.bins, sample_size=args.sample_size, knn_k=args.knn_k, seed=args.seed)
    comm = world()

    def body() -> int:
        m = load_manifest(args.dir, args.split)
        check_out_dir(args.out, m)
        r = profile_chunks(local_chunks(m, args.split, comm.rank, comm.size, verify=args.verify),
                           feature_names=list(m.schema.feature_names), total_rows=m.rows(args.split), comm=comm,
                           cfg=cfg, declared_classes=list(m.schema.classes))
        if comm.rank == 0:
            from hpctrain.quality.report import write_profile_report

            r["source"] = {"dir": str(m.root), "split": args.split or "all", "ranks": comm.size}
            files = [s.file for s in m.shards_for(args.split)]
            for item in r["anomalies"]["top"] + r["label_noise"]["examples"]:
                item["shard"] = files[item["shard"]]
            page = write_profile_report(Path(args.out), r, str(m.root))
            for line in summary_lines(r):
                print(line)
            print(f"report: {page} (also report.json and the PNG plots in {page.parent})")
        comm.barrier()
        return 0

    return run_collective(comm, body)
