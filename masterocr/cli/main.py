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
COMMAND_MODULES = ["data", "info", "train", "eval", "read", "metrics", "average", "import_weights", "serve",
                   "export"]
# Installed without torch (the runtime only: `./setup.sh --runtime`, requirements-runtime.txt), a command whose
# module needs a missing package stands in and says so when run; `read` still reads export folders.


def _third_party(error: ModuleNotFoundError) -> bool:
    return bool(error.name) and error.name.split(".")[0] != "masterocr"


def _needs(sub, name: str, error: ModuleNotFoundError) -> None:
    """A stand-in for a command whose module needs a missing package: it says so when run."""
    def fail(args):
        raise error

    p = sub.add_parser(name, help=f"(needs {error.name}, not installed)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=fail)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. Registration imports no torch, so `--help` and `--version` stay fast."""
    from masterocr import __version__

    parser = argparse.ArgumentParser(
        prog="masterocr", description="Scene text recognition: read, train, evaluate MASTER and friends.",
        epilog="exit codes: 0 done; 1 some inputs failed (each named on stderr, the others processed); "
               "2 usage or input error; 130/143 interrupted (SIGINT/SIGTERM); 141 output pipe closed; "
               "70 internal error (a bug: please report it). MASTEROCR_TRACEBACK=1 shows tracebacks.")
    parser.add_argument("--version", action="version", version=f"masterocr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"masterocr.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"masterocr.cli.{name}":
                continue  # command not built yet
            if _third_party(e):  # e.g. torch, which a runtime-only installation lacks
                _needs(sub, name, e)
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2  # no command: a usage error, as `masterocr data` without an action
    command = " ".join(str(part) for part in (args.command, getattr(args, "data_command", None)) if part)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\nmasterocr {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`masterocr read DIR | head -1`): stop quietly, as a process killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would fail on the closed pipe again
        return 141
    except ModuleNotFoundError as e:
        if not _third_party(e):
            raise
        if "pip install" in str(e):  # masterocr's own message for an optional package
            print(f"masterocr {command}: error: {e}", file=sys.stderr)
            return 2
        print(f"masterocr {command}: error: this needs {e.name}, which is not installed (a runtime-only "
              f"installation reads export folders: masterocr read IMAGES --model DIR; `./setup.sh` or "
              f"`pip install masterocr` installs everything)", file=sys.stderr)
        return 2
    except Exception as e:
        from masterocr.cli.common import user_error_message

        message = user_error_message(e)
        if os.environ.get("MASTEROCR_TRACEBACK"):
            raise
        if message is not None:
            print(f"masterocr {command}: error: {message}", file=sys.stderr)
            return 2
        import traceback

        print(f"masterocr {command}: internal error (a bug in masterocr; please report it with the "
              f"command and the traceback below): {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc()
        return 70

if __name__ == "__main__":
    sys.exit(main())
