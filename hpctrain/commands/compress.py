"""hpctrain compress RUN --out MODEL_DIR [--prune P] [--quantize auto|static|dynamic|none]"""

HELP = "quantize (int8) and prune a run's model into an artifact, guarded by validation macro F1"
DESCRIPTION = """Compress the model of a completed run (or of a float artifact) into a model artifact:
int8 quantization with torch.ao (static, calibrated on the training shards, for models with
convolutions; dynamic for Linear-only models), optional global magnitude pruning (--prune),
sparse storage where smaller. Prints size, parameters, CPU latency per sample at batch 1 and 64,
and validation macro F1 and accuracy before and after. Refuses to write the artifact when macro
F1 drops by more than --max-drop.
"""


def add_arguments(p):
    p.add_argument("run", help="run directory of a completed training run, or a float artifact")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--quantize", default="auto", choices=["auto", "static", "dynamic", "none"],
                   help="int8 method (auto: static where the model has convolutions, else dynamic)")
    p.add_argument("--prune", type=float, default=0.0, help="fraction of Conv/Linear weights to remove (e.g. 0.5)")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest macro F1 drop accepted (default 0.01)")
    p.add_argument("--data", help="shard directory for calibration and validation (default: the run's data.dir)")
    p.add_argument("--force", action="store_true", help="replace an existing artifact in --out")
    p.add_argument("--encrypt", metavar="KEYFILE", help="encrypt the weights with this key ('hpctrain keygen'); "
                   "serve and predict then need --key KEYFILE")
    from hpctrain.secure.cliargs import add_key_arguments

    add_key_arguments(p, key_help="key of an encrypted run (checkpoint.encrypt), data or source artifact")


def run(args):
    from hpctrain.secure.cliargs import apply
    from hpctrain.secure.keys import load_key
    from hpctrain.serve.compress import compress_run

    apply(args)
    key = load_key(args.encrypt) if args.encrypt else None
    if key is not None:
        from hpctrain.extras import require

        require("cryptography", "hpctrain compress --encrypt")  # before any output exists
    r = compress_run(args.run, args.out, quantize=args.quantize, prune=args.prune, max_drop=args.max_drop,
                     data=args.data, force=args.force, key=key)
    b, a = r["before"], r["after"]
    print(f"{'':22s} {'before':>12s} {'after':>12s}")
    rows = [("file size (bytes)", "bytes", "{:d}"), ("parameters", "params", "{:d}"),
            ("nonzero parameters", "nonzero_params", "{:d}"), ("latency/sample b=1 ms", "latency_ms_batch1", "{:.4f}"),
            ("latency/sample b=64 ms", "latency_ms_batch64", "{:.4f}"), ("val macro F1", "macro_f1", "{:.4f}"),
            ("val accuracy", "accuracy", "{:.4f}")]
    for label, key, fmt in rows:
        print(f"{label:22s} {fmt.format(b[key]):>12s} {fmt.format(a[key]):>12s}")
    print(f"quantize {r['quantize']}, prune {r['prune']:g}: {r['size_ratio']:.2f}x smaller, macro F1 drop "
          f"{r['f1_drop']:+.4f} (max {r['max_drop']:g}) on {r['validation']['rows']} rows; wrote {r['out']}")
    return 0
