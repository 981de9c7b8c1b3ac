"""hpctrain predict RUN SHARDS --out PRED.npz"""

HELP = "predict a shard directory with a trained run (writes an .npz)"
DESCRIPTION = """Load the final checkpoint of a completed 'hpctrain train' run and predict every
row of a shard directory. Writes PRED.npz with shard, row, label, pred and proba arrays and
prints the accuracy against the shards' labels. For many directories at once, use the farm's
built-in task: {"fn": "hpctrain.farm.builtin:batch_inference", "args": {...}}.
"""


def add_arguments(p):
    p.add_argument("run", help="run directory of a completed training run")
    p.add_argument("shards", help="shard directory to predict")
    p.add_argument("--out", required=True, help="output file (.npz)")
    p.add_argument("--split", choices=["train", "val"], help="one split only (default: all rows)")
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(p, key_help="key file of encrypted shards, checkpoints or artifact")


def run(args):
    from hpctrain.predict import predict_shards
    from hpctrain.secure.cliargs import apply

    apply(args)

    s = predict_shards(args.run, args.shards, args.out, split=args.split)
    score = f"R^2 {s['r2']:.4f}, MSE {s['mse']:.4g}" if "r2" in s else f"accuracy {s['accuracy']:.4f}"
    print(f"predicted {s['rows']} rows with {s['checkpoint']}: {score}; wrote {s['out']}")
    return 0
