"""MASTER -> an encoder graph and a decoder-step graph that keep its key/value cache (export/graphs.py).

Batch and width are dynamic: the memory's positional table covers up to MEMORY_POSITIONS feature positions,
so the encoder accepts widths up to that and the step any number of memory positions up to it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from masterocr.export.graphs import export_kv_decoder, kv_decoder_metadata
from masterocr.models.layers import ResNet31
from masterocr.models.master.model import MEMORY_POSITIONS, Master


def width_range(model: Master) -> list[int]:
    """[min, max] input widths: at least one feature column, at most MEMORY_POSITIONS memory positions."""
    height = int(model.img_size[0])
    hf = ResNet31.output_size(height, int(model.img_size[1]))[0]
    low = next(w for w in range(1, 64) if ResNet31.output_size(height, w)[1] >= 1)
    return [low, 4 * (MEMORY_POSITIONS // hf) + 3]


def export_master(model: Master, metadata: dict, folder: Path, opset: int, cache: str | None) -> dict[str, Path]:
    """Write encoder.onnx and decoder_step.onnx for a MASTER model (eval mode) and fill in its metadata fields."""
    cache = cache or "concat"
    height, width = (int(v) for v in model.img_size)
    low, high = width_range(model)
    metadata.update(kv_decoder_metadata(model, cache))
    metadata.update({"width_range": [low, high], "feature_height": int(model.feature_size(height, width)[0])})
    return export_kv_decoder(model, folder, opset, cache, torch.export.Dim("width", min=low, max=high),
                             MEMORY_POSITIONS)
