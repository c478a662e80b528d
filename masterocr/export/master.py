"""MASTER -> two ONNX graphs that keep its key/value cache (the decoder-with-past pattern of Hugging Face optimum).

    encoder.onnx       images (B, C, H, W) -> memory (B, N, D) and, per decoder layer i, the memory's
                       cross-attention keys/values memory_k_i / memory_v_i (B, h, N, D/h), projected once
    decoder_step.onnx  tokens (B,), position (), past_k_i / past_v_i (B, h, t, D/h), memory_k_i / memory_v_i
                       -> logits (B, C), present_k_i / present_v_i (B, h, t + 1, D/h), attention (B, N):
                       the last layer's head-averaged cross-attention of this step

Both graphs run the model's own code (`encode`, `init_cache`, `decode_step`), so they compute what the torch
path computes. Batch and width are dynamic (the memory's positional table covers up to 4096 feature
positions); the runtime replays greedy/beam decoding over them (masterocr/runtime/decoding.py).
With cache="fixed" the step takes and returns max_steps cache slots and writes position t in them instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from masterocr.models.layers import ResNet31
from masterocr.models.master.model import MEMORY_POSITIONS, KVCache, Master
from masterocr.runtime.format import ATTENTION, GRAPH_FILES, IMAGES, LOGITS, MEMORY, POSITION, TOKENS, \
    memory_kv_names, past_names, present_names


def _interleave(keys: list[torch.Tensor], values: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t for pair in zip(keys, values) for t in pair]  # k0, v0, k1, v1, ...


class EncoderGraph(nn.Module):
    """images -> memory and the per-layer cross-attention keys/values (what `init_cache` projects once)."""

    def __init__(self, model: Master):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.model.encode(images)  # (B, N, D)
        cache = self.model.init_cache(memory, 1)  # its self-attention slots are unused here (pruned)
        return (memory, *_interleave(cache.memory_k, cache.memory_v))  # memory, (B, h, N, D/h) x 2 x layers


class DecoderStepGraph(nn.Module):
    """One cached decoding step through `Master.decode_step`.

    concat: the past (B, h, t, D/h) gets one more slot and decode_step writes position t into it, so the
    present is (B, h, t + 1, D/h); the runtime passes position == t. fixed: the cache always has max_steps
    slots and decode_step writes slot `position` (masked attention over the whole cache).
    """

    def __init__(self, model: Master, cache: str):
        super().__init__()
        self.model, self.cache, self.layers = model, cache, len(model.decoder)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.layers
        past, memory_kv = tensors[: 2 * n], tensors[2 * n:]
        if self.cache == "concat":
            b, h, _, d = past[0].shape
            past = [torch.cat([t, t.new_zeros(b, h, 1, d)], 2) for t in past]  # (B, h, t + 1, D/h)
        else:
            past = [t.clone() for t in past]  # decode_step writes in place; a graph input stays as it came
        cache = KVCache(list(past[0::2]), list(past[1::2]), list(memory_kv[0::2]), list(memory_kv[1::2]))
        logits, attention = self.model.decode_step(tokens, position, cache, need_weights=True)
        return (logits, *_interleave(cache.self_k, cache.self_v), attention)  # (B, C), caches, (B, N)


def width_range(model: Master) -> list[int]:
    """[min, max] input widths: at least one feature column, at most MEMORY_POSITIONS memory positions."""
    height = int(model.img_size[0])
    hf = ResNet31.output_size(height, int(model.img_size[1]))[0]
    low = next(w for w in range(1, 64) if ResNet31.output_size(height, w)[1] >= 1)
    return [low, 4 * (MEMORY_POSITIONS // hf) + 3]


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes, opset: int) -> None:
    from masterocr.export import ExportError

    log = io.StringIO()  # the exporter narrates its passes on stderr; kept for the error message only
    torch_onnx_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")  # axis-renaming notes, deprecations inside torch.export
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=input_names,
                              output_names=output_names, dynamic_shapes=dynamic_shapes, opset_version=opset,
                              external_data=False, verbose=False)
    except Exception as e:  # torch.export / onnxscript raise many types; name the graph and keep the reason
        raise ExportError(f"{path.name}: torch.onnx.export failed ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from e
    finally:
        torch_onnx_log.setLevel(level)


def export_master(model: Master, metadata: dict, folder: Path, opset: int, cache: str) -> dict[str, Path]:
    """Write encoder.onnx and decoder_step.onnx for a MASTER model (eval mode) and fill in its metadata fields."""
    from masterocr.export import ExportError

    if cache not in ("concat", "fixed"):
        raise ExportError(f"cache layout {cache!r}: choose concat or fixed")
    Dim = torch.export.Dim
    layers = len(model.decoder)
    heads, head_dim = model.decoder[0].self_attn.num_heads, model.decoder[0].self_attn.head_dim
    height, width = (int(v) for v in model.img_size)
    hf, wf = model.feature_size(height, width)
    low, high = width_range(model)
    steps = int(model.max_steps)
    metadata.update({
        "decoding": "autoregressive",
        "width_range": [low, high],
        "feature_height": int(hf),
        "max_steps": steps,
        "cache": cache,
        "decoder": {"layers": layers, "heads": heads, "head_dim": head_dim, "num_classes": int(model.num_classes)},
        "tokens": {"eos": model.tokenizer.eos_id, "bos": model.tokenizer.bos_id, "pad": model.tokenizer.pad_id},
    })
    batch = Dim("batch", min=1, max=4096)

    # Example inputs of batch 2 (0 and 1 would be specialised by torch.export).
    images = torch.zeros(2, model.in_channels, height, width)
    encoder = folder / GRAPH_FILES["encoder"]
    _export(EncoderGraph(model), (images,), encoder, [IMAGES], [MEMORY, *memory_kv_names(layers)],
            {"images": {0: batch, 3: Dim("width", min=low, max=high)}}, opset)

    n = hf * wf
    past_len = 2 if cache == "concat" else steps
    past = [torch.zeros(2, heads, past_len, head_dim) for _ in range(2 * layers)]
    memory_kv = [torch.zeros(2, heads, n, head_dim) for _ in range(2 * layers)]
    tokens = torch.full((2,), model.tokenizer.bos_id, dtype=torch.long)
    position = torch.tensor(past_len if cache == "concat" else 0, dtype=torch.long)
    past_dims = {0: batch, 2: Dim("past", min=0, max=steps - 1)} if cache == "concat" else {0: batch}
    memory_dims = {0: batch, 2: Dim("positions", min=1, max=MEMORY_POSITIONS)}
    step = folder / GRAPH_FILES["decoder_step"]
    _export(DecoderStepGraph(model, cache), (tokens, position, *past, *memory_kv), step,
            [TOKENS, POSITION, *past_names(layers), *memory_kv_names(layers)],
            [LOGITS, *present_names(layers), ATTENTION],
            {"tokens": {0: batch}, "position": None, "tensors": tuple([past_dims] * (2 * layers) +
                                                                       [memory_dims] * (2 * layers))}, opset)
    return {"encoder": encoder, "decoder_step": step}
