"""ViTSTR -> one graph, images (B, C, H, W) -> logits (B, max_steps, C): every position at once (the model's
`forward`, i.e. `decode_parallel` over the whole encoder output). The runtime takes each position's arg-max
and blanks everything after the first EOS, as masterocr.decoding's parallel path does; there is no attention
map. Batch is dynamic; the ViT takes its configured image size only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from masterocr.export.graphs import batch_dim, export_graph
from masterocr.models.vitstr.model import ViTSTR
from masterocr.runtime.format import GRAPH_FILES, IMAGES, LOGITS


class ParallelGraph(nn.Module):
    def __init__(self, model: ViTSTR):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)  # (B, max_steps, C)


def export_vitstr(model: ViTSTR, metadata: dict, folder: Path, opset: int, cache: str | None) -> dict[str, Path]:
    """Write model.onnx for a ViTSTR model (eval mode) and fill in its metadata fields."""
    from masterocr.export import ExportError

    if cache is not None:
        raise ExportError(f"cache layout {cache!r}: ViTSTR reads every position at once, it has no decoder cache")
    tok = model.tokenizer
    metadata.update({"decoding": "parallel", "width_range": None, "max_steps": int(model.max_steps),
                     "feature_height": int(model.feature_size()[0]),
                     "tokens": {"eos": tok.eos_id, "bos": tok.bos_id, "pad": tok.pad_id}})
    images = torch.zeros(2, model.in_channels, *(int(v) for v in model.img_size))
    path = folder / GRAPH_FILES["model"]
    export_graph(ParallelGraph(model), (images,), path, [IMAGES], [LOGITS], {"images": {0: batch_dim()}}, opset)
    return {"model": path}
