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


FLAGS = ("shards", "split", "samples", "baseline", "steps", "repeats", "window", "seed")


def add_arguments(p):
    from hpctrain.config import add_flags
    from hpctrain.explain.options import METHODS, ExplainOptions

    p.add_argument("run", help="run directory of a completed training run, or a model artifact directory")
    p.add_argument("--out", required=True, help="output directory (created; never inside the run)")
    p.add_argument("--method", action="append", metavar="M",
                   help=f"method(s), comma-separated or repeated: {', '.join(METHODS)} (default: all that apply)")
    add_flags(p, ExplainOptions, FLAGS)


def run(args):
    from hpctrain.config import flag_values
    from hpctrain.explain.options import ExplainOptions, parse_methods
    from hpctrain.explain.run import explain

    opts = ExplainOptions(run=args.run, out=args.out, methods=parse_methods(args.method),
                          **flag_values(ExplainOptions, args, FLAGS))
    explain(opts)
    return 0
