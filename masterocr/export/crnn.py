"""CRNN -> one graph, images (B, C, H, W) -> frame logits (B, T, C), T following the width (the model's
`forward`). The BiLSTMs are written as ONNX LSTM nodes (export/graphs.py: OnnxLSTM), so batch and width are
both dynamic: EasyOCR's weights read canvases whose width follows each crop's aspect ratio. The runtime
decodes the frames best-path, with per-character probabilities and P(text | image) as the confidence,
through the same charset.CTCTokenizer.decode as the torch path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from masterocr.export.graphs import batch_dim, export_graph, with_onnx_lstms
from masterocr.models.crnn.model import CRNN
from masterocr.runtime.format import GRAPH_FILES, IMAGES, LOGITS

MAX_WIDTH = 8192


class FramesGraph(nn.Module):
    def __init__(self, model: CRNN):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)  # (B, T, C)


def width_range(model: CRNN) -> list[int]:
    """[min, max] input widths: at least one frame; at most MAX_WIDTH pixels."""
    height = int(model.img_size[0])

    def frames(width: int) -> int:
        try:
            return model.feature_size(height, width)[1]
        except ValueError:  # too small for the CNN
            return 0

    return [next(w for w in range(1, 256) if frames(w) >= 1), MAX_WIDTH]


def export_crnn(model: CRNN, metadata: dict, folder: Path, opset: int, cache: str | None) -> dict[str, Path]:
    """Write model.onnx for a CRNN (eval mode) and fill in its metadata fields."""
    from masterocr.export import ExportError

    if cache is not None:
        raise ExportError(f"cache layout {cache!r}: CRNN reads its frames with CTC, it has no decoder cache")
    low, high = width_range(model)
    metadata.update({"decoding": "ctc", "width_range": [low, high], "feature_height": 1,
                     "tokens": {"blank": model.tokenizer.blank_id}})
    images = torch.zeros(2, model.in_channels, *(int(v) for v in model.img_size))
    path = folder / GRAPH_FILES["model"]
    export_graph(FramesGraph(with_onnx_lstms(model)), (images,), path, [IMAGES], [LOGITS],
                 {"images": {0: batch_dim(), 3: torch.export.Dim("width", min=low, max=high)}}, opset)
    return {"model": path}
