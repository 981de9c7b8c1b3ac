"""hpctrain export RUN --out MODEL_DIR"""

HELP = "write a finished run's model as an artifact (safetensors weights + JSON)"
DESCRIPTION = """Turn a completed 'hpctrain train' run into a model artifact directory: the final
weights in safetensors (loading runs no code) and artifact.json with the model config, class ids
and names, the input schema, the imputer statistics, the training metrics and provenance (run dir,
step, versions, git revision). 'hpctrain predict' and 'hpctrain serve' accept it like a run dir.
Replacing an artifact (--force) is atomic: a server started with --watch swaps it in.
"""


def add_arguments(p):
    p.add_argument("run", help="run directory of a completed training run")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing artifact in --out")
    p.add_argument("--encrypt", metavar="KEYFILE", help="encrypt the weights with this key ('hpctrain keygen'); "
                   "serve and predict then need --key KEYFILE")
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(p, key_help="key of an encrypted run (checkpoint.encrypt), data or source artifact")


def run(args):
    from hpctrain.secure.cliargs import apply
    from hpctrain.secure.keys import load_key
    from hpctrain.serve.artifact import export_run

    apply(args)
    key = load_key(args.encrypt) if args.encrypt else None
    if key is not None:
        from hpctrain.extras import require

        require("cryptography", "hpctrain export --encrypt")  # before any output exists
    s = export_run(args.run, args.out, force=args.force, key=key)
    print(f"exported {args.run} -> {s['out']} ({s['weights']}, {s['bytes']} bytes, {s['params']} parameters)")
    return 0
