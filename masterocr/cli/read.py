"""`masterocr read`: read text from images, files, folders or glob patterns."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "read", help="read the text in word images",
        description="Read cropped word images. Prints path<TAB>text<TAB>confidence per image, or JSON lines "
                    "with per-character probabilities. Unreadable files are reported on stderr and the "
                    "others still read; the exit code is 1 when any input failed.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB",
                   help="image files, folders (their images, not recursive) or glob patterns (** allowed)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled model name, .safetensors or .ckpt (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="JSON lines with per-character probabilities")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--decode", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--beam-width", type=int, default=5)
    p.add_argument("--orientation", default="upright", choices=["upright", "auto"],
                   help="auto: read each image in its four turns (0/90/180/270) and keep the most confident "
                        "reading (4x the model work; JSON gives the turn as `orientation`); default upright")
    p.add_argument("--attention", metavar="OUT_DIR", default=None,
                   help="write per image a PNG of the decoder attention for each character")
    p.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(image paths in order, without duplicates; error messages for inputs that name nothing)."""
    paths: list[str] = []
    errors: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif os.path.exists(item):
            paths.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                errors.append(f"{item}: no file matches")
            paths.extend(found)
        else:
            errors.append(f"{item}: no such file")
    return list(dict.fromkeys(paths)), errors


def _attention_name(path: str, used: set[str]) -> str:
    stem = Path(path).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}.png"
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    import torch

    from masterocr.data.image import ImageError, load_image, rotate_image
    from masterocr.recognizer import attention_figure, load

    paths, failed = expand_inputs(args.inputs)
    for message in failed:
        print(f"masterocr read: {message}", file=sys.stderr)
    rec = load(args.model, device=args.device, decode_method=args.decode, beam_width=args.beam_width,
               orientation=args.orientation)
    out_dir = Path(args.attention) if args.attention else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    n_failed = len(failed)
    batch_size = max(1, args.batch_size)
    for start in range(0, len(paths), batch_size):
        images, tensors, names = [], [], []
        for path in paths[start:start + batch_size]:
            try:
                img = load_image(path, grayscale=rec.transform.grayscale)
                tensors.append(rec.preprocess(img))
            except ImageError as e:
                print(f"masterocr read: {e}", file=sys.stderr)
                n_failed += 1
                continue
            images.append(img)
            names.append(path)
        if not tensors:
            continue
        results = rec.predict(torch.stack(tensors))  # (B, C, H, W) -> B readings
        for path, img, r in zip(names, images, results):
            if args.json:
                record = {"path": path, "text": r.text, "confidence": round(r.confidence, 6),
                          "chars": list(r.text), "char_probs": [round(p, 6) for p in r.char_probs]}
                if args.orientation == "auto":
                    record["orientation"] = r.orientation
                print(json.dumps(record, ensure_ascii=False))
            else:
                print(f"{path}\t{r.text}\t{r.confidence:.4f}")
            if out_dir is not None:
                if r.attention is None:
                    print(f"masterocr read: {path}: this model has no decoder attention to draw", file=sys.stderr)
                else:
                    # The attention belongs to the turn that was read: draw it over that turn.
                    fig = attention_figure(rotate_image(img, r.orientation), r, rec.img_size, rec.keep_aspect)
                    fig.save(out_dir / _attention_name(path, used_names))
        sys.stdout.flush()
    if n_failed:
        print(f"masterocr read: {n_failed} input(s) failed, {len(paths) - (n_failed - len(failed))} read",
              file=sys.stderr)
    return 1 if n_failed else 0
