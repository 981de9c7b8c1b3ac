"""The ``hpctrain`` command line: every subcommand is a thin layer over a library call.

Each subcommand lives in ``hpctrain/commands/<name>.py`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import nothing heavy
at module level, so ``hpctrain --help`` stays fast. To add a command, add its module
name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hpctrain import __version__
from hpctrain.errors import HpctrainError

COMMANDS = [
    "doctor",
    "launch",
    "shard",
    "keygen",
    "farm",
    "profile",
    "drift",
    "clean",
    "balance",
    "impute",
    "train",
    "predict",
    "explain",
    "export",
    "compress",
    "serve",
    "update",
    "submit",
    "status",
    "logs",
    "monitor",
    "cancel",
    "sweep",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpctrain",
        description="MPI/HPC batch toolkit for training AI models on Slurm clusters.",
    )
    parser.add_argument("--version", action="version", version=f"hpctrain {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    # not dest="command": a subcommand's own argument of that name (launch's COMMAND...) would
    # overwrite it, and errors would be printed as "hpctrain ['true']: error: ..."
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"hpctrain.commands.{name}")
        p = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        rc = args._run(args)
    except HpctrainError as e:
        if args.debug or os.environ.get("HPCTRAIN_DEBUG"):
            raise
        print(f"hpctrain {args._command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hpctrain {args._command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
