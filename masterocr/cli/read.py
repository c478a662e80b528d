"""`masterocr read`: read text from images, files, folders or glob patterns."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from masterocr.cli.common import (add_orientation_argument, by_reason, json_line, non_negative_int, positive_int,
                                  shown, tsv_field)

BACKENDS = ("auto", "torch", "onnx")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "read", help="read the text in word images",
        description="Read cropped word images. Prints path<TAB>text<TAB>confidence per image, or JSON lines "
                    "with per-character probabilities. Unreadable files are reported on stderr and the "
                    "others still read; the exit code is 1 when any input failed. Tabs, newlines and "
                    "backslashes in names and texts are written as \\t, \\n and \\\\ in the TSV, bytes that "
                    "are not UTF-8 as \\xNN (in JSON as \\udcNN escapes, which json.loads and os.fsencode "
                    "turn back into the name).")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB",
                   help="image files, folders (their images, not recursive) or glob patterns (** allowed)")
    p.add_argument("--model", default=None, metavar="NAME|PATH|DIR",
                   help="bundled model name, .safetensors, .ckpt, or an export folder (masterocr export) read "
                        "with ONNX Runtime (default: the bundled model)")
    add_backend_argument(p)
    p.add_argument("--json", action="store_true", help="JSON lines with per-character probabilities")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--decode", default="greedy", choices=["greedy", "beam", "nar"],
                   help="greedy or beam: autoregressive; nar: all positions at once (PARSeq)")
    p.add_argument("--refine", type=non_negative_int, default=None, metavar="N",
                   help="cloze refinement passes after decoding (PARSeq; default: the model's own, 1)")
    p.add_argument("--beam-width", type=positive_int, default=5)
    add_orientation_argument(p, "; JSON gives the turn as `orientation`")
    p.add_argument("--attention", metavar="OUT_DIR", default=None,
                   help="write per image a PNG of the decoder attention for each character")
    p.set_defaults(func=run)


PRECISIONS = ("fp32", "bf16", "bf16-checked")


def add_backend_argument(p) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto (default): an export folder runs on ONNX Runtime, weights on torch; onnx: weights "
                        "are exported to a temporary folder first; torch: weights only")
    add_precision_argument(p)


def add_precision_argument(p) -> None:
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="default: the model's own (fp32, or int8 for an int8 export). bf16: torch autocast, or on "
                        "the onnx backend the encoder in bf16 through OpenVINO (pip install openvino); "
                        "bf16-checked (onnx backend): bf16, and every image with a close call at some position "
                        "read again in fp32, so the tokens stay fp32's")


def load_recognizer(model: str | None, backend: str = "auto", **options):
    """A recognizer for the command line: torch for weights, the ONNX runtime for an export folder, or the
    weights exported on the fly (into a temporary folder, removed at exit) for backend="onnx"."""
    from masterocr import load
    from masterocr.runtime import is_export_folder

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch" and is_export_folder(model):
        raise ValueError(f"{model}: an export folder runs on the onnx backend (ONNX Runtime), not torch")
    if options.get("precision") is None:
        options.pop("precision", None)  # the model's own
    elif options["precision"] == "bf16-checked" and not (backend == "onnx" or is_export_folder(model)):
        if backend == "torch":
            raise ValueError(f"precision {options['precision']!r} runs on the onnx backend, not torch")
        backend = "onnx"  # auto: weights are exported first
    if backend == "onnx" and not is_export_folder(model):
        import atexit
        import shutil
        import tempfile

        from masterocr.export import export_model
        from masterocr.recognizer import default_model_name

        source = model or default_model_name()
        folder = tempfile.mkdtemp(prefix="masterocr-export-")
        atexit.register(shutil.rmtree, folder, True)
        print(f"masterocr: exporting {source} to {folder} for the onnx backend", file=sys.stderr)
        export_model(source, folder)
        model = folder
    return load(model, **options)


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(image paths in order, without duplicates; error messages for inputs that name nothing).

    A folder gives every entry with an image suffix, not only regular files: a directory named x.png, a
    dangling link or a link loop is then reported by the reader with its reason instead of silently skipped.
    """
    paths: list[str] = []
    errors: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            try:
                found = sorted(str(p) for p in Path(item).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as e:
                errors.append(f"{shown(item)}: cannot list the folder ({e.strerror or e})")
                continue
            if not found:
                errors.append(f"{shown(item)}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif os.path.lexists(item):  # a file, or a link the reader explains (dangling, loop)
            paths.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True)
                           if not os.path.isdir(p) or Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{shown(item)}: no file matches")
            paths.extend(found)
        else:
            errors.append(f"{shown(item)}: no such file")
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
    from masterocr.data.image import ImageError, load_image, rotate_image
    from masterocr.figures import attention_figure

    paths, failed = expand_inputs(args.inputs)
    for message in failed:
        print(f"masterocr read: {message}", file=sys.stderr)
    reasons = ["no such file"] * len(failed)  # why each failed input failed, for the closing summary
    rec = load_recognizer(args.model, args.backend, device=args.device, decode_method=args.decode,
                          beam_width=args.beam_width, refine_iters=args.refine, orientation=args.orientation,
                          precision=args.precision)
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
                print(f"masterocr read: {shown(str(e))}", file=sys.stderr)
                n_failed += 1
                reasons.append(e.reason)
                continue
            images.append(img)
            names.append(path)
        if not tensors:
            continue
        results = rec.predict_batch(tensors)  # B readings
        for path, img, r in zip(names, images, results):
            figure = None
            if out_dir is not None:
                if r.attention is None:
                    print(f"masterocr read: {shown(path)}: this model has no decoder attention to draw",
                          file=sys.stderr)
                else:
                    figure = out_dir / _attention_name(path, used_names)
                    if figure.stem != (Path(path).stem or "image"):  # another input took the plain name
                        print(f"masterocr read: {shown(path)}: attention written to {shown(figure)} "
                              f"({Path(path).stem or 'image'}.png holds another input's)", file=sys.stderr)
                    # The attention belongs to the turn that was read: draw it over that turn.
                    attention_figure(rotate_image(img, r.orientation), r, rec.img_size, rec.keep_aspect).save(figure)
            if args.json:
                line = {"path": path, "text": r.text, "confidence": round(r.confidence, 6),
                        "chars": list(r.text), "char_probs": [round(p, 6) for p in r.char_probs]}
                if rec.orientation != "upright":
                    line["orientation"] = r.orientation
                if figure is not None:
                    line["attention"] = str(figure)
                print(json_line(line))
            else:  # one line per image whatever the name holds: tabs, newlines, undecodable bytes escaped
                print(f"{tsv_field(path)}\t{tsv_field(r.text)}\t{r.confidence:.4f}")
        sys.stdout.flush()
    if n_failed:
        print(f"masterocr read: {n_failed} of {len(paths) + len(failed)} input(s) failed ({by_reason(reasons)}), "
              f"{len(paths) - (n_failed - len(failed))} read", file=sys.stderr)
    return 1 if n_failed else 0
