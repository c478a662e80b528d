"""Could `--orientation auto` skip the quarter turns of wide crops? A measurement of a rule that was not adopted.

A line of text across a wide crop is upright or upside down, not on its side (a word on its side makes a tall
crop), so reading a crop at least R times wider than tall only in turns 0 and 180 would save up to half the
model work. But a short word whose upright crop is taller than wide becomes a wide crop when turned a quarter,
and then loses its right turn. This script reads each image of a set turned by 0/90/180/270 degrees in all four
turns once (the search as built), then scores the four-way search and the two-turn rule at each R from the same
readings (protocol 36, the search's upright margin), with the turns each would read per image. Choose on a
training split, never on a test split (README "Rotated text": no R passed on the training splits, so the search
reads four turns).

    python benchmarks/auto_views.py --model master-small --data ../shared/data/SVT/train --ratios 1.0 1.5 2.0 \
        [--holdout 0.3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masterocr.data.image import ROTATIONS, rotate_image  # noqa: E402
from masterocr.evaluation import apply_protocol  # noqa: E402
from masterocr.reading import UPRIGHT_MARGIN, ReadResult, most_confident_turns  # noqa: E402
from orientation_margin import add_set_arguments, labelled_images, readings_per_turn, recognizer_and_set  # noqa: E402


def keep(turns: list[ReadResult], wide: bool) -> ReadResult:
    """The reading the search keeps of an image's four-turn readings (ROTATIONS order); a wide crop's only among
    turns 0 and 180."""
    candidates = [turns[0], turns[2]] if wide else turns
    return most_confident_turns(candidates, len(candidates), UPRIGHT_MARGIN)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser)
    parser.add_argument("--ratios", nargs="+", type=float, default=[1.0, 1.5, 2.0])
    args = parser.parse_args()
    rec, ((name, dataset),) = recognizer_and_set(args, "auto")
    images, labels = labelled_images(dataset)
    print(f"{args.model} on {name} ({len(images)} words), protocol 36, upright margin {UPRIGHT_MARGIN}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    rules = {"four turns": 0.0, **{f"ratio {r:g}": r for r in args.ratios}}
    correct = {rule: [] for rule in rules}
    views = dict.fromkeys(rules, 0)
    for rotation in ROTATIONS:
        turned = [rotate_image(img, rotation) for img in images]
        readings = readings_per_turn(rec, turned)
        for rule, ratio in rules.items():
            count = 0
            for img, turns, label in zip(turned, readings, labels):
                wide = bool(ratio) and img.width >= ratio * img.height
                count += apply_protocol(keep(turns, wide).text, "36") == label
                views[rule] += 2 if wide else 4
            correct[rule].append(count)
    n = len(images)
    print("| rule | " + " | ".join(f"{d}°" for d in ROTATIONS) + " | pooled | correct (upright) | turns per image |")
    print("|---|" + "---:|" * (len(ROTATIONS) + 3))
    for rule, counts in correct.items():
        print(f"| {rule} | " + " | ".join(f"{100 * c / n:.2f}" for c in counts)
              + f" | {100 * sum(counts) / (4 * n):.2f} | {sum(counts)} ({counts[0]}) | {views[rule] / (4 * n):.2f} |")


if __name__ == "__main__":
    main()
