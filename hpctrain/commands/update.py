"""hpctrain update RUN NEW_SHARDS --out NEW_RUN [--replay 0.2]"""

HELP = "continue a finished run on new shards (with replay of old rows) as a new run"
DESCRIPTION = """Online/incremental learning: start from RUN's final weights and train on NEW_SHARDS
mixed with a replay sample of RUN's old training rows (--replay: their share of the mixed
training set; limits forgetting). Writes NEW_RUN as an ordinary run (update.yaml, parent.json,
checkpoints, result.json) and update.json with macro F1 on the old validation split and on the
new data, before and after. New shards without a 'train' split are split --val-fraction for
validation. -n N trains on N MPI ranks through 'hpctrain launch'; --prepare-only writes the data
and update.yaml for 'hpctrain submit NEW_RUN/update.yaml' (Slurm) instead of training; --report
then scores the finished run (update.json).

  hpctrain drift shards/digits shards/new --on-drift "hpctrain update runs/cnn shards/new --out runs/cnn-2"
"""


def add_arguments(p):
    from hpctrain.serve.options import LR_SCALE

    p.add_argument("run", help="run directory of a completed training run")
    p.add_argument("new_shards", help="shard directory of the new data")
    p.add_argument("--out", required=True, help="directory of the new run")
    p.add_argument("--replay", type=float, default=0.2, help="share of old training rows in the mix (default 0.2)")
    p.add_argument("--epochs", type=int, help="epochs of the update (default: the run's)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="held out for validation when the new shards have no train split (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the replay sample and the split")
    p.add_argument("--lr-scale", type=float, default=LR_SCALE,
                   help=f"the update's learning rate as a share of the run's optimizer.lr (default {LR_SCALE:g}; "
                        "--set optimizer.lr=... sets it outright)")
    p.add_argument("-n", "--ranks", type=int, default=1, help="MPI ranks (default 1: in this process)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of the update's training config (repeatable)")
    p.add_argument("--prepare-only", action="store_true", help="write the data and update.yaml, train nothing")
    p.add_argument("--report", action="store_true",
                   help="only score an update run trained elsewhere (after --prepare-only and submit)")


def run(args):
    from hpctrain.serve.online import prepare_update, score_update, update

    if args.prepare_only:
        path = prepare_update(args.run, args.new_shards, args.out, replay=args.replay, epochs=args.epochs,
                              val_fraction=args.val_fraction, seed=args.seed, lr_scale=args.lr_scale,
                              overrides=args.overrides)
        print(f"wrote {path}; train it with 'hpctrain train {path}' (or launch/submit)")
        return 0
    if args.report:
        r = score_update(args.out)
    else:
        r = update(args.run, args.new_shards, args.out, replay=args.replay, epochs=args.epochs, ranks=args.ranks,
                   val_fraction=args.val_fraction, seed=args.seed, lr_scale=args.lr_scale, overrides=args.overrides)

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    b, a = r["before"], r["after"]
    print(f"{'macro F1':18s} {'before':>8s} {'after':>8s}")
    print(f"{'old validation':18s} {f(b['old_val_macro_f1']):>8s} {f(a['old_val_macro_f1']):>8s}")
    print(f"{'new data':18s} {f(b['new_macro_f1']):>8s} {f(a['new_macro_f1']):>8s}")
    rows = r["parent"]["rows"]
    print(f"trained on {rows['new_train']} new + {rows['replayed_old']} replayed rows; wrote {args.out} "
          f"(report {args.out}/update.json)")
    return 0
