"""`masterocr` command line: parses arguments and hands over to the library. Nothing imports this module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on shared cores spinning threads starve the working one
# (measured 5-100x slower with another busy process). Set before torch loads; the user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Each module defines `register(subparsers)` adding its command(s) with `func` set as default.
COMMAND_MODULES = ["data", "info", "train", "eval", "read", "metrics", "average", "import_weights", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masterocr", description="Scene text recognition: read, train, evaluate MASTER and friends.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"masterocr.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"masterocr.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"masterocr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
