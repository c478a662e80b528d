"""What every command shares for hostile input: argument types that check ranges, output that stays valid
whatever the file names hold (TSV escapes, UTF-8 JSON), and failure summaries counted by reason.

Imports nothing heavy (no torch): `register` functions use the argument types while `--help` is built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from typing import Any, Iterable

PROG = "masterocr"


# ---- argument types --------------------------------------------------------------------------------------

def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts, widths)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (worker counts, limits where 0 means none)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


# ---- output that stays valid whatever a file name holds ------------------------------------------------

_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_SPECIAL = re.compile(r"[\\\t\n\r\udc80-\udcff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def tsv_field(text: str) -> str:
    """One TSV cell, always valid UTF-8 on one line: backslash, tab, CR and LF become \\\\, \\t, \\r, \\n, and
    bytes of a file name that are not UTF-8 (decoded by Python as surrogate escapes) become \\xNN."""
    def escape(m: re.Match) -> str:
        c = m.group()
        return _TSV_ESCAPES.get(c) or f"\\x{ord(c) - 0xDC00:02x}"

    return _TSV_SPECIAL.sub(escape, text)


def json_line(obj: Any) -> str:
    """JSON on one line, UTF-8 text as it is, but lone surrogates (a non-UTF-8 file name as Python decodes
    it) written as \\uXXXX escapes: the line is valid UTF-8, and json.loads + os.fsencode give back the bytes."""
    text = json.dumps(obj, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def shown(path: str | os.PathLike) -> str:
    """A path for messages: printable, with undecodable bytes as \\xNN and control characters escaped."""
    return tsv_field(os.fspath(path)) if not isinstance(path, bytes) else tsv_field(os.fsdecode(path))


def error(command: str, message: str) -> None:
    """`masterocr COMMAND: MESSAGE` on stderr (the one format every command's messages use)."""
    print(f"{PROG} {command}: {message}", file=sys.stderr)


def user_error_message(e: BaseException) -> str | None:
    """The message for an error caused by what the user typed or pointed at (None: a bug, show a traceback).

    The library raises ValueError (ImageError, WeightsError, ...) and FileNotFoundError with messages that
    name the input; OS errors name their file; configuration, YAML and out-of-memory errors are the user's
    to fix too."""
    kind = type(e)
    module = kind.__module__ or ""
    if isinstance(e, OSError) and getattr(e, "filename", None) is not None and e.strerror:
        return f"{shown(e.filename)}: {e.strerror}"
    if isinstance(e, (ValueError, OSError, MemoryError)):
        return str(e) or kind.__name__
    if kind.__name__ in ("OutOfMemoryError", "MisconfigurationException") or module.startswith(
            ("lmdb", "yaml", "omegaconf")):
        hint = "; lower the batch size" if kind.__name__ == "OutOfMemoryError" else ""
        return f"{kind.__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{hint}"
    return None


def by_reason(reasons: Iterable[str]) -> str:
    """'3 no such file, 1 not an image file' (most frequent first)."""
    counts = Counter(reasons)
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


__all__ = ["by_reason", "error", "json_line", "non_negative_int", "positive_int", "shown", "tsv_field"]


def add_orientation_argument(p, extra: str = "") -> None:
    """read/eval's --orientation, defined once: reading.ORIENTATIONS spelled out, so that --help imports nothing."""
    p.add_argument("--orientation", default=None, choices=["upright", "tall", "auto"],
                   help="tall: read crops taller than wide both as they are and turned 90 degrees, keeping the "
                        "more confident reading (for a model trained with turned words); auto: read each image in "
                        "its four turns (0/90/180/270) and keep the most confident reading (4x the model work"
                        f"{extra}); default: the mode the model was trained for (tall for the bundled master-small, "
                        "else upright)")
