"""How close a call must be for bf16-checked to read an image again in fp32: the default check margin.

For each model (default: the bundled master-small and parseq), every image of the given sets (default: the
training splits IIIT5K/train, SVT/train and IC15/train, where the default is chosen) is decoded by the runtime in
fp32 (ONNX Runtime) and in bf16 (the encoder through OpenVINO). A word "flips" when its bf16 tokens differ from
fp32's. For each candidate margin the table gives the share of words bf16-checked would read again (their
smallest gap between the two likeliest classes, over every decoding pass, is below the margin) and the flips it
would miss. The rule (notes in the README): the default is the smallest candidate that misses no flip on the
training splits, the larger one over the bundled models.

    python benchmarks/check_margin.py                                   # both bundled models, training splits
    python benchmarks/check_margin.py --models master-small --data ../shared/data/SVT/test   # measuring only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_equivalence import _same_row, batches  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAINING = [str(DATA / s / "train") for s in ("IIIT5K", "SVT", "IC15")]
CANDIDATES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def margins_and_flips(folder: str, data: list[str], threads: int, batch_size: int):
    """(margins, flipped) over every image of `data`: each word's smallest bf16 decision gap, and whether its
    bf16 tokens differ from fp32's."""
    import masterocr
    from masterocr.evaluation import open_benchmarks

    fp32 = masterocr.load(folder, threads=threads)
    bf16 = masterocr.load(folder, threads=threads, precision="bf16")
    pad = getattr(fp32.tokenizer, "pad_id", 0)
    margins, flipped = [], []
    for name, dataset in open_benchmarks(data):
        count = 0
        for images, _ in batches(dataset, fp32, batch_size):
            want = fp32.decode(images, need_attention=False)[0]
            ids, _, _, _, gaps = bf16._decode_with(bf16.bf16_graph, images, False, margins=True)
            margins.extend(gaps.tolist())
            flipped.extend(not _same_row(ids[i], want[i], pad) for i in range(len(images)))
            count += len(images)
        print(f"  {name}: {count} words, {sum(flipped[-count:])} flip in bf16", flush=True)
    return np.array(margins), np.array(flipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["master-small", "parseq"])
    parser.add_argument("--data", nargs="+", default=TRAINING)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--exports", metavar="DIR", help="keep the exports here and reuse them")
    args = parser.parse_args()

    from masterocr.export import export_model
    from masterocr.runtime.openvino import cpu_has_bf16

    print(f"CPU bf16 in OpenVINO: {cpu_has_bf16()}; sets: {', '.join(args.data)}")
    chosen = {}
    with tempfile.TemporaryDirectory(prefix="masterocr-margin-") as tmp:
        for model in args.models:
            folder = os.path.join(args.exports or tmp, Path(model).stem)
            if not os.path.isdir(folder):
                export_model(model, folder)
            print(f"\n{model}")
            margins, flipped = margins_and_flips(folder, args.data, args.threads, args.batch_size)
            n = len(margins)
            print(f"{'margin':>8}{'read again':>12}{'flips missed':>14}   ({n} words, {flipped.sum()} flip)")
            for margin in CANDIDATES:
                again = margins < margin
                print(f"{margin:>8.2f}{100 * again.mean():>11.2f}%{int((flipped & ~again).sum()):>14}")
            safe = [m for m in CANDIDATES if not (flipped & (margins >= m)).any()]
            chosen[model] = safe[0] if safe else None
            largest = float(margins[flipped].max()) if flipped.any() else 0.0
            print(f"largest gap of a flipped word: {largest:.4f}; smallest safe candidate: {chosen[model]}")
    if all(v is not None for v in chosen.values()):
        print(f"\nrule: default check margin = {max(chosen.values())} ({chosen})")
    else:
        print(f"\nrule: no candidate is safe for {[m for m, v in chosen.items() if v is None]}")


if __name__ == "__main__":
    main()
