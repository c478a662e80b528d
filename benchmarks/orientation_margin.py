"""How much the orientation search should prefer the upright reading (reading.UPRIGHT_MARGIN).

`--orientation auto` reads each image in its four turns and keeps the most confident reading; a model never
trained on turned text sometimes reads an upright word more confidently in a wrong turn. With a margin m, the
upright reading is kept unless another turn's confidence beats it by more than m. This script reads each
image of a set turned by 0/90/180/270 degrees in all four turns once (so 16 readings per image), then scores
every margin from the same readings (protocol 36): choose the margin on a training split, never on a test split.

    python benchmarks/orientation_margin.py --model master-small --data ../shared/data/SVT/train \
        --margins 0 0.02 0.05 0.1 0.2 0.3 0.5 [--holdout 0.2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from masterocr.data.image import ROTATIONS, rotate_image  # noqa: E402
from masterocr.evaluation import apply_protocol, open_benchmarks  # noqa: E402
from masterocr.reading import ReadResult, most_confident_turns  # noqa: E402


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the (selection) set an orientation benchmark reads, and its threads."""
    parser.add_argument("--model", default="master-small")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/SVT/train"))
    parser.add_argument("--holdout", type=float, help="only this held-out fraction of the set (seed 0)")
    parser.add_argument("--threads", type=int, default=1)


def recognizer_and_set(args: argparse.Namespace, orientation: str):
    """(the recognizer reading in `orientation`, open_benchmarks' rows of --data) for add_set_arguments' args."""
    import torch

    torch.set_num_threads(args.threads)
    import masterocr

    holdout = (args.holdout, 0, None) if args.holdout else None
    return masterocr.load(args.model, orientation=orientation), open_benchmarks(args.data, holdout=holdout)


def labelled_images(dataset) -> tuple[list, list[str]]:
    """The readable images of an open_benchmarks dataset (RGB) and their labels under protocol 36."""
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if item is not None:
            images.append(item[0].convert("RGB"))
            labels.append(apply_protocol(item[1], "36"))
    return images, labels


def readings_per_turn(rec, images, batch: int = 64) -> list[list[ReadResult]]:
    """Per image, its readings in the four turns (ROTATIONS order)."""
    out = []
    for start in range(0, len(images), batch):
        views = [rec.preprocess(img) for img in images[start:start + batch]]  # (4, C, H, W) each
        stacked = rec.collate(views)  # (B, 4, C, H, W)
        flat = rec.predict(stacked.reshape(-1, *stacked.shape[2:]), need_attention=False)
        out.extend(flat[i:i + 4] for i in range(0, len(flat), 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser)
    parser.add_argument("--margins", nargs="+", type=float, default=[0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])
    args = parser.parse_args()
    rec, ((name, dataset),) = recognizer_and_set(args, "auto")
    images, labels = labelled_images(dataset)
    print(f"{args.model} on {name} ({len(images)} words), protocol 36, load average {os.getloadavg()[0]:.1f}")
    per_rotation = {}
    for rotation in ROTATIONS:
        per_rotation[rotation] = readings_per_turn(rec, [rotate_image(img, rotation) for img in images])
    print("| margin | " + " | ".join(f"{r}°" for r in ROTATIONS) + " | mean of turned |")
    print("|---:|" + "---:|" * (len(ROTATIONS) + 1))
    upright_only = [sum(apply_protocol(turns[0].text, "36") == label for turns, label in zip(per_rotation[r], labels))
                    / len(labels) * 100 for r in ROTATIONS]
    print("| no search | " + " | ".join(f"{a:.2f}" for a in upright_only) + f" | {sum(upright_only[1:]) / 3:.2f} |")
    for margin in args.margins:
        accs = []
        for rotation in ROTATIONS:
            flat = [reading for turns in per_rotation[rotation] for reading in turns]
            kept = most_confident_turns(flat, 4, upright_margin=margin)
            accs.append(sum(apply_protocol(r.text, "36") == label for r, label in zip(kept, labels))
                        / len(labels) * 100)
        print(f"| {margin:g} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {sum(accs[1:]) / 3:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
