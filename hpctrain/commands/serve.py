"""hpctrain serve RUN_OR_MODEL_DIR"""

HELP = "serve a run or a model artifact over HTTP (micro-batching, Prometheus metrics)"
DESCRIPTION = """Serve a completed run dir or a model artifact ('hpctrain export'/'compress') over HTTP:
POST /predict ({"instances": [[f0, f1, ...], ...]}; null = missing, imputed as in training),
GET /health, /ready, /metadata, /metrics (Prometheus text). Concurrent requests are grouped
into one forward pass for at most --max-wait-ms and up to --max-batch rows. SIGTERM finishes
the requests in flight and exits 0. Binds 127.0.0.1 unless --host says otherwise.
"""


def add_arguments(p):
    from dataclasses import MISSING, fields

    from hpctrain.serve.options import ServeOptions

    p.add_argument("model", help="run directory or model artifact directory")
    for f in fields(ServeOptions):
        if f.name == "model":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            conv = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            default = f.default if f.default is not MISSING else None
            p.add_argument(flag, type=conv, default=default, help=f"{f.metadata['help']} (default {default})")


def run(args):
    from dataclasses import fields

    from hpctrain.serve.options import ServeOptions
    from hpctrain.serve.server import serve

    opts = ServeOptions(**{f.name: getattr(args, f.name) for f in fields(ServeOptions)})
    return serve(opts)
