"""int8 exports with ONNX Runtime's quantization tools (`onnxruntime.quantization`).

Every graph gets dynamic int8 quantization of its MatMul/Gemm and LSTM weights (activations quantized on the fly
at run time). The encoder's convolutions, which are most of a CNN recognizer's time, are quantized statically when
calibration images are given: per-channel int8 weights and uint8 activations in QDQ form, with activation
ranges (MinMax) measured on images from a TRAINING split, never a test split (paths with a "test" folder are
refused). Without calibration images they stay fp32. benchmarks/runtime_equivalence.py measures what int8 costs
in accuracy and benchmarks/runtime.py what it buys in speed.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from masterocr.runtime.format import IMAGES

TEST_SPLIT_NAMES = {"test", "tests", "evaluation"}
# Quantized dynamically in every graph. LSTM (the BiLSTMs of CRNN, TRBA, seq2seq): on EasyOCR's english_g2 it
# halves the file and cuts batch-1 time by a fifth with the same accuracy on IIIT5K/train and SVT/train.
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM")
# What --int8 quantizes: "all" (the calibrated convolutions and the dynamic ops), or "conv" (the calibrated
# convolutions only; MatMul/Gemm/LSTM stay fp32). On master-small "conv" keeps fp32's tokens on IIIT5K/train
# (its own training data; benchmarks/int8_select.py) but not on the test sets: 98.1% of IIIT5K/test and 94.9% of
# SVT/test words keep them, about as many as with "all" (README, "Every family exports").
INT8_OPS = ("all", "conv")


def refuse_test_split(root: str | os.PathLike) -> None:
    """Calibration data must not come from a test split: a path with a test folder is an error naming it."""
    parts = {p.lower() for p in Path(os.path.abspath(root)).parts}
    if parts & TEST_SPLIT_NAMES:
        raise ValueError(f"calibration data {root}: looks like a test split ({', '.join(sorted(parts & TEST_SPLIT_NAMES))}"
                         " in its path); calibrate on a training split (e.g. ../shared/data/IIIT5K/train)")


def calibration_images(roots: Sequence[str | os.PathLike], metadata: dict, count: int, seed: int = 0
                       ) -> np.ndarray:
    """Up to `count` images drawn (seeded) from datasets or image folders, preprocessed as the runtime will:
    (n, C, H, W) float32. Unreadable images are skipped."""
    from masterocr.cli.read import expand_inputs
    from masterocr.data.datasets import build_dataset
    from masterocr.data.image import ImageError, ImageTransform

    height, width = metadata["img_size"]
    transform = ImageTransform(height, width, keep_aspect=metadata["keep_aspect"],
                               grayscale=metadata["in_channels"] == 1, mean=metadata["mean"], std=metadata["std"])
    loaders = []  # one zero-argument loader per sample
    for root in roots:
        refuse_test_split(root)
        try:
            dataset = build_dataset(root, transform=None, charset=None, max_length=None)
            loaders += [lambda i=i, d=dataset: d.raw(i)[0] for i in range(len(dataset))]
        except (ValueError, FileNotFoundError):  # not a dataset: a folder or glob of images
            paths, errors = expand_inputs([str(root)])
            if errors and not paths:
                raise ValueError(f"calibration data {root}: {errors[0]}") from None
            loaders += [lambda p=p: p for p in paths]
    if not loaders:
        raise ValueError(f"calibration data {', '.join(map(str, roots))}: no images")
    random.Random(seed).shuffle(loaders)
    images = []
    for load in loaders:
        if len(images) >= count:
            break
        try:
            images.append(transform.array(load()))
        except ImageError:
            continue
    if not images:
        raise ValueError(f"calibration data {', '.join(map(str, roots))}: no readable image")
    return np.stack(images)


def quantize_dynamic_matmul(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(DYNAMIC_OPS), weight_type=QuantType.QInt8)


def quantize_static_conv(src: Path, dst: Path, images: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration images in batches of 32."""

        def __init__(self):
            self.batches = [images[i: i + 32] for i in range(0, len(images), 32)]

        def get_next(self):
            return {IMAGES: self.batches.pop(0)} if self.batches else None

    with tempfile.TemporaryDirectory(prefix="masterocr-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def quantize_export(graphs: dict[str, Path], metadata: dict, calibration: Sequence[str | os.PathLike] | None,
                    count: int = 256, ops: str = "all") -> dict:
    """Quantize an export's graphs in place; returns the record stored in the metadata ("quantization").
    ops: INT8_OPS ("conv" needs calibration images)."""
    if ops not in INT8_OPS:
        raise ValueError(f"int8 ops {ops!r}: choose one of {', '.join(INT8_OPS)}")
    if ops == "conv" and not calibration:
        raise ValueError("int8 ops 'conv' quantizes the convolutions statically: give calibration images from a "
                         "training split (--calibration)")
    images = None
    if calibration:
        images = calibration_images(calibration, metadata, count)
    dynamic = ops == "all"
    record = {"matmul": "dynamic int8 (QInt8 weights, per tensor; MatMul, Gemm and LSTM)" if dynamic
              else "fp32 (int8 ops: conv)", "conv": "fp32 (no calibration images)"}
    logging.disable(logging.WARNING)  # the quantizer's advice on the root logger (pre-processing, QDQ input)
    try:
        _quantize_graphs(graphs, images, calibration, record, dynamic)
    finally:
        logging.disable(logging.NOTSET)
    record["summary"] = (("int8 MatMul" if dynamic else "fp32 MatMul")
                         + (", int8 Conv" if record["conv"].startswith("static") else ", fp32 Conv"))
    return record


def _quantize_graphs(graphs: dict[str, Path], images: np.ndarray | None, calibration, record: dict,
                     dynamic: bool) -> None:
    import onnx

    for role, path in graphs.items():
        model = onnx.load(str(path), load_external_data=False)
        has_images = any(i.name == IMAGES for i in model.graph.input)
        has_conv = any(n.op_type == "Conv" for n in model.graph.node)
        with tempfile.TemporaryDirectory(prefix="masterocr-quant-", dir=path.parent) as tmp:
            src = path
            if images is not None and has_images and has_conv:
                src = Path(tmp) / "conv.onnx"
                quantize_static_conv(path, src, images)
                record["conv"] = (f"static int8 QDQ (per-channel QInt8 weights, QUInt8 activations, MinMax "
                                  f"calibration on {len(images)} images of {', '.join(map(str, calibration))})")
            if dynamic:
                out = Path(tmp) / "int8.onnx"
                quantize_dynamic_matmul(src, out)
                src = out
            if src != path:
                os.replace(src, path)


__all__ = ["DYNAMIC_OPS", "INT8_OPS", "quantize_export", "calibration_images", "quantize_dynamic_matmul", "quantize_static_conv"]
