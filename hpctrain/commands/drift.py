"""hpctrain drift REF_DIR CUR_DIR  |  hpctrain drift --model RUN CUR_DIR"""

HELP = "detect drift between two shard sets (KS + Bonferroni, PSI); exit 0 no drift, 3 drift, 2 bad input"
DESCRIPTION = """Compare every feature of CUR_DIR with REF_DIR: a two-sample KS test (scipy) with a
Bonferroni correction, and the PSI over the reference's deciles (0.1 moderate, 0.25 major).
Writes OUT/drift.json, OUT/drift.png (most drifted features, reference against current) and
OUT/drift.html.

Exit status: 0 no drift, 3 drift, 2 bad input, so a shell script or a Slurm dependency can act:

  hpctrain drift shards/ new-shards/ --out drift/ || sbatch retrain.sbatch
  hpctrain drift shards/ new-shards/ --on-drift "sbatch retrain.sbatch"

With --model RUN, compares the run's validation metric (RUN/result.json) with the metric of
its checkpoint on the labelled shards in CUR_DIR; drift when it is worse by more than --tolerance.
"""


def add_arguments(p):
    p.add_argument("dirs", nargs="+", metavar="DIR", help="REF_DIR CUR_DIR, or CUR_DIR with --model")
    p.add_argument("--model", metavar="RUN", default=None, help="run directory: model-level drift")
    p.add_argument("--out", default="drift-report", help="output directory (default ./drift-report)")
    p.add_argument("--ref-split", choices=["train", "val"], default=None, help="split of REF_DIR (default all)")
    p.add_argument("--cur-split", choices=["train", "val"], default=None, help="split of CUR_DIR (default all)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise KS level before Bonferroni (default 0.05)")
    p.add_argument("--bins", type=int, default=10, help="PSI bins from reference quantiles, 2 to 1000 (default 10)")
    p.add_argument("--max-share", type=float, default=0.0,
                   help="report drift when the share of drifted features exceeds this (default 0: any feature)")
    p.add_argument("--top", type=int, default=6, help="features to plot (default 6)")
    p.add_argument("--metric", default=None, help="--model: metric name in result.json (default: val accuracy)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="--model: allowed metric drop, a finite number >= 0 (default 0.02)")
    p.add_argument("--on-drift", metavar="CMD", default=None,
                   help="run CMD (split like a shell would, but no shell) when drift is found; rank 0 only")
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(p, key_help="key file of encrypted shards (repeat it for two keys)")


def run(args):
    from hpctrain.quality.drift_check import DriftArgs, run_drift
    from hpctrain.secure.cliargs import apply

    apply(args)  # every rank loads the keys itself

    fields = DriftArgs.__dataclass_fields__
    return run_drift(DriftArgs(**{k: getattr(args, k) for k in fields}))
