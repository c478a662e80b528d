"""PARSeq -> three graphs: the encoder and the cached decoder step (export/graphs.py, as MASTER: the step's
past keys/values are those of the content stream, one position per step), and a refinement graph.

    refine.onnx   tokens (B, T) a reading (T = max_steps; PAD after it), memory_k_i / memory_v_i
                  -> logits (B, T, C), attention (B, T, N): one cloze pass (`PARSeq.refine`), every position
                  predicted again from the other characters of the reading and the image

The refinement graph also serves the non-autoregressive method: a cloze pass over an empty reading (every
position PAD, which is never context) leaves each query the BOS context alone, which is exactly
`decode_parallel`. The runtime replays greedy (cached, early stop) or beam search over the step graph, or "nar"
over the refinement graph, then `refine_iters` refinement passes, as masterocr.decoding does. The ViT takes its
configured image size only: batch is dynamic, the width is not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from masterocr.export.graphs import batch_dim, export_graph, export_kv_decoder, kv_decoder_metadata
from masterocr.models.parseq.model import PARSeq
from masterocr.runtime.format import ATTENTION, GRAPH_FILES, LOGITS, TOKENS, memory_kv_names


class RefineGraph(nn.Module):
    """A reading (B, T) and the memory's per-layer keys/values -> logits (B, T, C), attention (B, T, N)."""

    def __init__(self, model: PARSeq):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *memory_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = list(zip(memory_kv[0::2], memory_kv[1::2]))
        return self.model.refine(None, tokens, need_weights=True, memory_kv=pairs)


def export_parseq(model: PARSeq, metadata: dict, folder: Path, opset: int, cache: str | None) -> dict[str, Path]:
    """Write encoder.onnx, decoder_step.onnx and refine.onnx for a PARSeq model (eval mode)."""
    cache = cache or "concat"
    height, width = (int(v) for v in model.img_size)
    hf, wf = model.feature_size()
    metadata.update(kv_decoder_metadata(model, cache))
    metadata.update({"width_range": None, "feature_height": int(hf)})
    graphs = export_kv_decoder(model, folder, opset, cache)

    layers, steps = len(model.decoder), int(model.max_steps)
    attn = model.decoder[0].cross_attn
    tokens = torch.full((2, steps), model.tokenizer.pad_id, dtype=torch.long)
    memory_kv = [torch.zeros(2, attn.num_heads, hf * wf, attn.head_dim) for _ in range(2 * layers)]
    refine = folder / GRAPH_FILES["refine"]
    batch = batch_dim()
    export_graph(RefineGraph(model), (tokens, *memory_kv), refine, [TOKENS, *memory_kv_names(layers)],
                 [LOGITS, ATTENTION], {"tokens": {0: batch}, "memory_kv": tuple({0: batch} for _ in memory_kv)},
                 opset)
    return {**graphs, "refine": refine}
