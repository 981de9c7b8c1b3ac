"""hpctrain doctor"""

HELP = "check every part of the stack and say how to fix what is missing"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args):
    import json
    from dataclasses import asdict

    from hpctrain.doctor import format_table, healthy, run_checks

    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_table(checks))
        print()
        print("ready for local training" if healthy(checks) else
              "NOT ready for local training: fix the MISSING rows above")
    return 0 if healthy(checks) else 1
