"""`masterocr import KIND SRC -o OUT.safetensors`: foreign checkpoints (strhub, EasyOCR, ...) -> our weights."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from masterocr.importers import IMPORTERS

    p = subparsers.add_parser(
        "import", help="convert a foreign checkpoint (strhub, EasyOCR, ...) into masterocr weights",
        description="Map another project's checkpoint onto the matching masterocr model and write it as "
                    ".safetensors with its config, charset and preprocessing, ready for read, eval, train "
                    "--finetune and export. Files are loaded weights-only: no pickled code ever runs.")
    p.add_argument("kind", metavar="KIND", help=f"source format: {', '.join(sorted(IMPORTERS)) or '(none yet)'}")
    p.add_argument("source", metavar="SRC", help="the checkpoint file")
    p.add_argument("--output", "-o", required=True, help="the .safetensors file to write (with a .json sidecar)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="storage type (default fp32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from masterocr.importers import run_importer
    from masterocr.weights import load_model, save_weights

    imported = run_importer(args.kind, args.source)
    extra = {"imported_from": {"kind": args.kind, "file": Path(args.source).name}, **imported.extra}
    path = save_weights(imported.tensors, imported.model_cfg, args.output, dtype=args.dtype, extra=extra)
    load_model(path)  # the written file must load into the model its config describes
    n = sum(t.numel() for t in imported.tensors.values())
    print(f"{path}: {imported.model_cfg.get('name')} ({n / 1e6:.2f} M parameters) from {args.kind} {args.source}")
    return 0
