"""Does the synthetic engine's realism pay off? Small models trained only on synthetic words, scored on real crops.

Trains `masterocr train --config synth-only-tiny` (master-tiny at 32x100, batch 64, one CPU thread, no
augmentation) once per variant on the same number of samples, then scores each final checkpoint on real
benchmark crops (36-character protocol, the same evaluation path as `masterocr eval`):

    engine        our engine with its default appearance model (fonts, colours, backgrounds, effects)
    engine-irregular  the `irregular` preset of issue 20: circles, photographs, neon, emboss, cast shadows,
                  display faces, stronger geometry and low resolution
    naive         the `naive` preset of the same engine: same words, black text on white, DejaVu Sans only,
                  fixed margins, no effects (what a plain PIL renderer gives)
    engine-noctc  our engine without the auxiliary CTC loss (the joint CTC-attention ablation)
    naive-augment the naive preset plus the training pipeline's RandAugment (`data.augment=parseq`): can
                  generic image augmentation stand in for the engine's appearance model?
    engine-short-first  our engine with short words first: synthetic labels capped at 3 characters at step
                  0, the cap growing linearly to 25 by step 1,000 (`data.short_words_first`)
    engine-nowarmup     our engine without the 200 learning-rate warm-up steps (`train.warmup=0`)
    engine+<change>     our engine with one setting of the `irregular` preset (ONE_CHANGE below): lowres,
                  photo, perspective, curve, rotation, motion, scene (glow, emboss, cast shadows),
                  faces (the 23 display-face packages at the preset's weights)

The last column is the validation accuracy on IIIT5K/train (a training split, allowed for validation) every
500 steps: how soon each variant starts to read.

A variant whose run folder already holds a finished checkpoints/last.ckpt is not retrained (delete it to
retrain); an interrupted one is resumed from it.
Runs take ~25 min each for 3,000 steps on one core of the 2-core development machine.

    python benchmarks/synth_realism.py [--variants engine naive engine-noctc] [--steps 3000]
        [--runs runs] [--data ../shared/data/IIIT5K/test ../shared/data/SVT/test]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from masterocr.data.synth.config import build_config  # noqa: E402
from masterocr.evaluation import evaluate, open_benchmarks  # noqa: E402
from masterocr.recognizer import load  # noqa: E402
from masterocr.weights import read_checkpoint  # noqa: E402

CONFIG = "synth-only-tiny"
VARIANTS = {
    "engine": [],
    "engine-irregular": ["data.train.0.synthetic.config=irregular"],
    "naive": ["data.train.0.synthetic.config=naive"],
    "engine-noctc": ["train.aux_ctc_weight=0"],
    "naive-augment": ["data.train.0.synthetic.config=naive", "data.augment=parseq"],
    "engine-short-first": ["data.short_words_first={steps: 1000, start_length: 3}"],
    "engine-nowarmup": ["train.warmup=0"],
}
# Issue 20's appearance changes one at a time: the default engine with one setting of the `irregular` preset
# (configs/synth/irregular.yaml), so each change is measured alone at the same budget.
SYNTH = "data.train.0.synthetic.config="
ONE_CHANGE = {
    "lowres": "{effects: {low_resolution: {p: 0.3, strength: 0.75}}}",
    "photo": "{backgrounds: {weights: {solid: 0.25, gradient: 0.2, texture: 0.25, image: 0.1, photo: 0.2}}}",
    "perspective": "{effects: {perspective: {p: 0.5, strength: 0.4}}}",
    "curve": "{effects: {curve: {p: 0.12, strength: 1.0}}}",
    "rotation": "{effects: {rotation: {p: 1.0, strength: 5.0}}}",
    "motion": "{effects: {motion_blur: {p: 0.1, strength: 4.0}}}",
    "scene": "{effects: {glow: {p: 0.04}, emboss: {p: 0.05}, cast_shadow: {p: 0.12}}}",
    # The preset's whole font section, as the preset loader builds it (its group weights replace the defaults').
    "faces": json.dumps({"fonts": dataclasses.asdict(build_config("irregular").fonts)}),
}
VARIANTS.update({f"engine+{name}": [SYNTH + value] for name, value in ONE_CHANGE.items()})
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def train(variant: str, run_dir: Path, steps: int, seed: int | None, resume: Path | None = None) -> None:
    seeds = [] if seed is None else [f"train.seed={seed}", f"data.train.0.synthetic.seed={seed}"]
    cmd = [sys.executable, "-m", "masterocr.cli.main", "train", "--config", CONFIG, *VARIANTS[variant], *seeds,
           f"train.max_steps={steps}", "--output", str(run_dir)]
    if resume is not None:  # an interrupted run continues exactly where its last checkpoint left it
        cmd = [sys.executable, "-m", "masterocr.cli.main", "train", "--resume", str(resume)]
    print("+", " ".join(cmd), flush=True)
    with open(run_dir.with_suffix(".log"), "a" if resume else "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def samples_seen(ckpt: Path) -> tuple[int, int]:
    """-> (optimiser steps, images seen) stored in a training checkpoint."""
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    train_cfg = read_checkpoint(ckpt)[2]["train"]
    return step, step * int(train_cfg["batch_size"]) * int(train_cfg["accumulate_grad_batches"])


def val_curve(run_dir: Path) -> str:
    """Validation word accuracy of the run at each validation, from its CSV log: "0.2 / 13.1 / ..."."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return "-"
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    return " / ".join(f"{float(r['val/acc']):.1f}" for r in sorted(rows, key=lambda r: int(r["step"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps per run (batch 64)")
    parser.add_argument("--runs", default="runs", help="run folders go to RUNS/synth-<variant>")
    parser.add_argument("--data", nargs="+", default=[str(SHARED / "IIIT5K" / "test"), str(SHARED / "SVT" / "test")])
    parser.add_argument("--threads", type=int, default=1, help="threads for evaluation")
    parser.add_argument("--seed", type=int, help="training and synthetic-data seed (default: the config's); "
                        "runs go to RUNS/synth-<variant>-seed<SEED>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    benchmarks = open_benchmarks(args.data)
    header = ["variant", "steps", "samples"]
    for name, _ in benchmarks:
        header += [f"{name} acc", f"{name} 1-NED"]
    header.append("val acc every 500 steps")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in args.variants:
        run_dir = Path(args.runs) / (f"synth-{variant}" if args.seed is None else f"synth-{variant}-seed{args.seed}")
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            train(variant, run_dir, args.steps, args.seed)
        elif samples_seen(ckpt)[0] < args.steps:  # interrupted: finish it rather than score a partial run
            train(variant, run_dir, args.steps, args.seed, resume=ckpt)
        step, seen = samples_seen(ckpt)
        result = evaluate(load(str(ckpt)), benchmarks, protocol="36", progress=False)
        cells = [variant, str(step), f"{seen:,}"]
        for row in result.rows:
            cells += [f"{100 * row.accuracy:.2f}", f"{100 * row.one_minus_ned:.2f}"]
        cells.append(val_curve(run_dir))
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\nWord accuracy and 1-NED (%), protocol 36, final checkpoints:\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
