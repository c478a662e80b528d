"""Which crops `--orientation tall` should read both as they are and turned a quarter (RecognizerBase.tall_ratio).

A crop at least `ratio` times taller than wide is read twice, as it is and turned 90 degrees counter-clockwise,
and the more confident reading is kept. 1.5 is the training rule (data.tall_turn) and PaddleOCR's; a word turned
by a quarter whose upright crop is less than 1.5x wider than tall (short words) stays under it and is read
squeezed. This script scores each ratio on a set turned by 0/90/180/270 degrees (protocol 36), through the same
evaluation path as `masterocr eval`: choose on a training split, never on a test split.

    python benchmarks/tall_ratio.py --model master-small --data ../shared/data/SVT/train --ratios 1.5 1.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masterocr.data.image import ROTATIONS  # noqa: E402
from masterocr.evaluation import evaluate  # noqa: E402
from orientation_margin import add_set_arguments, recognizer_and_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser)
    parser.add_argument("--ratios", nargs="+", type=float, default=[1.5, 1.25, 1.0])
    args = parser.parse_args()
    rec, benchmarks = recognizer_and_set(args, "tall")
    print(f"{args.model} on {args.data}, orientation tall, protocol 36\n")
    print("| ratio | " + " | ".join(f"{d}°" for d in ROTATIONS) + " | pooled |")
    print("|---:|" + "---:|" * (len(ROTATIONS) + 1))
    for ratio in args.ratios:
        rec.tall_ratio = ratio
        rows = [evaluate(rec, benchmarks, rotation=d, progress=False).rows[0] for d in ROTATIONS]
        pooled = 100.0 * sum(m.correct for m in rows) / sum(m.num_samples for m in rows)
        print(f"| {ratio:g} | " + " | ".join(f"{100 * m.accuracy:.2f}" for m in rows) + f" | {pooled:.2f} |")


if __name__ == "__main__":
    main()
