"""The `lpemu` command (also `python -m emu`).

User errors print one message and exit with status 2, never a traceback.
With --json a command prints one JSON object on stdout and nothing else there.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import GuestFault, UserError


def _demo(args) -> int:
    from . import demo

    if args.runs < 1:
        raise UserError("--runs must be at least 1")
    results = demo.run_demo(runs=args.runs)
    if args.json:
        print(json.dumps({"results": [s.to_json() for s in results]}))
        return 0
    print("Is the seed patch safe? foo() { f = bar(); something_else(); baz(f); },\n"
          "the patch changes what bar() returns and patches baz() to match.\n"
          f"{args.runs} transition start points per row, each run checked by the oracle.\n")
    print(demo.table(results))
    for s in results:
        if s.example:
            print(f"\n{s.model} / {s.variant}, first inconsistent run (start {s.first_failing_start}):\n  {s.example}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpemu", description="live-patching laboratory: real x86-64 code in "
                                "Unicorn under every kernel live-patching consistency model")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the seed scenario under every model and print the comparison")
    d.add_argument("--runs", type=int, default=24, help="transition start points per model and variant")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"lpemu: error: {exc}", file=sys.stderr)
        return 2
    except GuestFault as exc:
        print(f"lpemu: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lpemu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
