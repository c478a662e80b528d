"""TRBA and the seq2seq model (one module, masterocr.models.trba) -> an encoder graph and a decoder-step graph
over the recurrent state.

    encoder.onnx       images (B, C, H, W) -> memory (B, N, D) and its attention projection memory_proj
                       (B, N, H), computed once per image (`encode` + `init_cache`): TPS rectification
                       (grid_sample: ONNX GridSample, opset 16 and later), the CNN, the BiLSTMs (ONNX LSTM
                       nodes, export/graphs.py)
    decoder_step.onnx  tokens (B,), past_hidden (B, H) [, past_cell (B, H) for an LSTM cell], memory,
                       memory_proj -> logits (B, C), present_hidden [, present_cell], attention (B, N)

The step is the model's own `decode_step`; the position is implicit in the state, so the step takes none.
The runtime replays greedy (dropping ended rows, state and memory included) and beam search over it, as
masterocr.decoding does with the model's RNNCache. Batch is dynamic; the width is the configured one (the TPS
output and the views are fixed sizes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from masterocr.export.graphs import batch_dim, export_graph, with_onnx_lstms
from masterocr.models.layers import RNNCache
from masterocr.models.trba.model import TRBA
from masterocr.runtime.format import ATTENTION, GRAPH_FILES, IMAGES, LOGITS, MEMORY, MEMORY_PROJ, TOKENS, \
    rnn_state_names


class RNNEncoderGraph(nn.Module):
    def __init__(self, model: TRBA):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.model.encode(images)  # (B, N, D)
        return memory, self.model.init_cache(memory).memory_proj  # (B, N, D), (B, N, H)


class RNNStepGraph(nn.Module):
    def __init__(self, model: TRBA):
        super().__init__()
        self.model = model
        self.lstm = model.decoder.cell_type == "lstm"

    def forward(self, tokens: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.lstm:
            hidden, cell, memory, memory_proj = tensors
        else:
            hidden, memory, memory_proj = tensors
            cell = hidden[:, :0]  # a GRU carries no cell state: (B, 0), never read
        cache = RNNCache(hidden, cell, memory, memory_proj)
        logits, attention = self.model.decode_step(tokens, None, cache, need_weights=True)
        state = (cache.hidden, cache.cell) if self.lstm else (cache.hidden,)
        return (logits, *state, attention)  # (B, C), (B, H) x 1-2, (B, N)


def export_trba(model: TRBA, metadata: dict, folder: Path, opset: int, cache: str | None) -> dict[str, Path]:
    """Write encoder.onnx and decoder_step.onnx for a TRBA or seq2seq model (eval mode)."""
    from masterocr.export import ExportError

    if cache is not None:
        raise ExportError(f"cache layout {cache!r}: {type(model).__name__}'s decoder carries a recurrent state, "
                          "not a key/value cache")
    decoder = model.decoder
    tok = model.tokenizer
    metadata.update({
        "decoding": "autoregressive", "width_range": None, "feature_height": 1, "max_steps": int(model.max_steps),
        "cache": None,
        "decoder": {"kind": "rnn", "cell": decoder.cell_type, "hidden_size": int(decoder.hidden_size),
                    "num_classes": int(model.num_classes)},
        "tokens": {"eos": tok.eos_id, "bos": tok.bos_id, "pad": tok.pad_id},
    })
    batch = batch_dim()
    images = torch.zeros(2, model.in_channels, *(int(v) for v in model.img_size))
    encoder = folder / GRAPH_FILES["encoder"]
    export_graph(RNNEncoderGraph(with_onnx_lstms(model)), (images,), encoder, [IMAGES], [MEMORY, MEMORY_PROJ],
                 {"images": {0: batch}}, opset)

    n = model.feature_size()[1]
    names = rnn_state_names(decoder.cell_type)
    state = [torch.zeros(2, decoder.hidden_size) for _ in names]
    memory = torch.zeros(2, n, model.memory_dim)
    memory_proj = torch.zeros(2, n, decoder.hidden_size)
    tokens = torch.full((2,), tok.bos_id, dtype=torch.long)
    step = folder / GRAPH_FILES["decoder_step"]
    export_graph(RNNStepGraph(model), (tokens, *state, memory, memory_proj), step,
                 [TOKENS, *[f"past_{s}" for s in names], MEMORY, MEMORY_PROJ],
                 [LOGITS, *[f"present_{s}" for s in names], ATTENTION],
                 {"tokens": {0: batch}, "tensors": tuple({0: batch} for _ in range(len(names) + 2))}, opset)
    return {"encoder": encoder, "decoder_step": step}
