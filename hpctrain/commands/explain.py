"""hpctrain explain RUN_OR_MODEL --out DIR [--split val] [--samples K] [--method ...]"""

HELP = "explain a trained model: attributions, permutation importance, attention (explain.json + HTML)"
DESCRIPTION = """Explain a completed 'hpctrain train' run (or a model artifact) on a split of its
shards: integrated gradients, saliency and occlusion per sample (Captum; pip install
'hpctrain[explain]'), permutation importance (accuracy and macro-F1 drop per feature, mean
and std over --repeats shuffles), mean |attribution| per feature, and the attention maps of
model.kind=attention. Writes DIR/explain.json (every number), the PNGs and a self-contained
DIR/explain.html. Under 'hpctrain launch -n N' the work is split over the ranks and rank 0
writes; the numbers are those of one rank.
"""


def add_arguments(p):
    from hpctrain.explain.options import METHODS

    p.add_argument("run", help="run directory of a completed training run, or a model artifact directory")
    p.add_argument("--out", required=True, help="output directory (created; never inside the run)")
    p.add_argument("--shards", help="shard directory to explain (default: the run's data.dir)")
    p.add_argument("--split", default="val", help="split whose rows are explained: train or val (default: val)")
    p.add_argument("--samples", type=int, default=16, help="rows explained one by one (default: 16)")
    p.add_argument("--method", action="append", metavar="M",
                   help=f"method(s), comma-separated or repeated: {', '.join(METHODS)} (default: all that apply)")
    p.add_argument("--baseline", default="mean",
                   help="IG/occlusion baseline: mean (training feature means from the manifest) or zero")
    p.add_argument("--steps", type=int, default=64, help="integrated-gradients steps (default: 64)")
    p.add_argument("--repeats", type=int, default=5, help="permutation shuffles per feature (default: 5)")
    p.add_argument("--window", type=int, help="occlusion window: features (tables) or pixels per side (images)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample choice and the shuffles (default: 0)")


def run(args):
    from hpctrain.explain.options import ExplainOptions, parse_methods
    from hpctrain.explain.run import explain

    opts = ExplainOptions(run=args.run, out=args.out, shards=args.shards, split=args.split, samples=args.samples,
                          methods=parse_methods(args.method), baseline=args.baseline, steps=args.steps,
                          repeats=args.repeats, window=args.window, seed=args.seed)
    explain(opts)
    return 0
