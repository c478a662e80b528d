"""`masterocr average W1 W2 ... --output OUT.safetensors`: the mean of several weights of one model."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "average", help="average several weights of one model into one .safetensors (a model soup)",
        description="Write the uniform mean of weights of the same architecture and charset: runs fine-tuned "
                    "from the same start with different seeds, or one run's last checkpoints. Each WEIGHTS "
                    "is a bundled name, a .safetensors file or a training checkpoint (its EMA weights when "
                    "it has them).")
    p.add_argument("weights", nargs="+", metavar="WEIGHTS")
    p.add_argument("--output", "-o", required=True, help="the .safetensors file to write (with a .json sidecar)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="storage type of the written file (default fp32; fp16 halves it for distribution)")
    p.add_argument("--no-ema", action="store_true", help="use checkpoints' raw weights, not their EMA")
    p.add_argument("--note", help="free text kept in the metadata (e.g. how the sources were trained)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masterocr.recognizer import stored_keep_aspect
    from masterocr.weights import average_weights, save_weights

    tensors, cfg = average_weights(args.weights, use_ema=not args.no_ema)
    extra = {"averaged_from": [str(w) for w in args.weights]}
    # The resize mode is preprocessing, kept in the metadata rather than the model config: it must agree too.
    modes = {str(w): stored_keep_aspect(w) for w in args.weights}
    if len(set(modes.values()) - {None}) > 1:
        raise ValueError(f"the weights were trained with different resize modes (keep_aspect): {modes}")
    if any(m is not None for m in modes.values()):
        extra["keep_aspect"] = next(m for m in modes.values() if m is not None)
    if args.note:
        extra["note"] = args.note
    path = save_weights(tensors, cfg, args.output, dtype=args.dtype, extra=extra)
    print(f"{path}: mean of {len(args.weights)} weights ({args.dtype})")
    return 0
