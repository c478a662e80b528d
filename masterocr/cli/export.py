"""`masterocr export`: write a model as ONNX graphs with their metadata, for the torch-free runtime."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from masterocr.runtime.format import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = subparsers.add_parser(
        "export", help="export a model to ONNX for the torch-free runtime (ONNX Runtime)",
        description="Export MODEL (bundled name, .safetensors or .ckpt) into the folder DIR: for MASTER and PARSeq "
                    "an encoder graph and a decoder-step graph with a key/value cache (and PARSeq's refinement "
                    "graph), for TRBA and seq2seq an encoder and a step over the recurrent state, for ViTSTR and "
                    "CRNN one graph; each carries the model's metadata (charset, image size, resize mode, "
                    "normalisation, decoding defaults), so the folder alone reads images: "
                    "`masterocr read IMAGES --model DIR` or `masterocr.load(DIR)`.")
    p.add_argument("model", metavar="MODEL",
                   help="bundled model name, .safetensors or .ckpt; or, with --int8, an fp32 export folder")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="export folder (created; graphs replaced)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset of the default domain, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--int8", action="store_true",
                   help="quantize the graphs with ONNX Runtime: dynamic int8 MatMul/Gemm (see --calibration)")
    p.add_argument("--calibration", nargs="+", metavar="ROOT",
                   help="with --int8: images of a TRAINING split (labels.tsv folder, LMDB or image folder) to "
                        "calibrate a static int8 quantization of the convolutions; without it they stay fp32")
    p.add_argument("--calibration-count", type=int, default=256, help="calibration images used (default 256)")
    p.add_argument("--int8-ops", default="all", choices=["all", "conv"],
                   help="with --int8: all (default: the calibrated convolutions and MatMul/Gemm/LSTM, dynamic) or "
                        "conv (the calibrated convolutions only; MatMul/Gemm/LSTM stay fp32)")
    p.add_argument("--cache", default=None, choices=["concat", "fixed"],
                   help="key/value cache layout of a transformer decoder step (MASTER, PARSeq): concat (default: "
                        "past of t positions in, t+1 out) or fixed (max_steps slots in and out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masterocr.export import export_model

    if (args.calibration or args.int8_ops != "all") and not args.int8:
        raise ValueError("--calibration and --int8-ops are used by --int8 only")
    result = export_model(args.model, args.output, format=args.format, int8=args.int8, opset=args.opset,
                          cache=args.cache, calibration=args.calibration,
                          calibration_count=args.calibration_count, int8_ops=args.int8_ops)
    meta = result.metadata
    for role, size in result.sizes().items():
        print(f"{result.graphs[role]}\t{role}\t{size / 1e6:.1f} MB")
    quant = meta.get("quantization")
    print(f"masterocr export: {meta['model_name']} ({meta['family']}, {meta['precision']}"
          f"{', ' + quant['summary'] if quant else ''}), input {meta['img_size'][0]}x{meta['img_size'][1]}, "
          f"opset {meta['opset']}; read it with `masterocr read IMAGES --model {args.output}`", file=sys.stderr)
    return 0
