"""What the family exporters share: torch.onnx.export with our settings, nn.LSTM as ONNX's LSTM operator, and
the two graphs of a decoder with a key/value cache (MASTER, PARSeq).

    encoder graph      images (B, C, H, W) -> memory (B, N, D) and, per decoder layer i, the memory's
                       cross-attention keys/values memory_k_i / memory_v_i (B, h, N, D/h), projected once
    decoder-step graph tokens (B,), position (), past_k_i / past_v_i, memory_k_i / memory_v_i
                       -> logits (B, C), present_k_i / present_v_i, attention (B, N): the last layer's
                       head-averaged cross-attention of this step

Both run the model's own `encode`, `init_cache` and `decode_step` (the decoder-with-past pattern of Hugging
Face optimum), so they compute what the torch path computes. Cache layouts: "concat" (the past (B, h, t, D/h)
gets one more slot and decode_step writes position t into it, so the present is (B, h, t + 1, D/h)) and
"fixed" (max_steps slots in and out, slot `position` written).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from masterocr.models.layers import KVCache
from masterocr.runtime.format import ATTENTION, GRAPH_FILES, IMAGES, LOGITS, MEMORY, POSITION, TOKENS, \
    memory_kv_names, past_names, present_names

MAX_BATCH = 4096


def batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def export_graph(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                 dynamic_shapes, opset: int) -> None:
    """torch.onnx.export (torch.export based) into one self-contained file; ExportError naming the graph."""
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


# ---- recurrent layers ----------------------------------------------------------------------------------------

class OnnxLSTM(nn.Module):
    """An nn.LSTM (one layer, batch first, forward or bidirectional, no projection) emitted as ONNX's LSTM
    operator, with the same outputs (the sequence; no final states).

    torch.export traces nn.LSTM step by step, which fixes the sequence length to the example's (frames follow
    the image width here); one ONNX LSTM node keeps it dynamic and is what ONNX Runtime runs fastest.
    ONNX orders the gates input, output, forget, cell; torch input, forget, cell, output.
    """

    GATES = (0, 3, 1, 2)  # torch's gate chunks in ONNX's order

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if not lstm.batch_first or lstm.num_layers != 1 or lstm.proj_size:
            raise ValueError("OnnxLSTM converts one-layer batch-first LSTMs without projection")
        self.hidden_size = lstm.hidden_size
        self.directions = 2 if lstm.bidirectional else 1
        suffixes = ["", "_reverse"][: self.directions]

        def gates(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.chunk(4, 0)[i] for i in self.GATES], 0)

        def stacked(name: str) -> torch.Tensor:
            return torch.stack([gates(getattr(lstm, f"{name}_l0{s}").detach()) for s in suffixes])

        self.register_buffer("w", stacked("weight_ih"))  # (dirs, 4H, input)
        self.register_buffer("r", stacked("weight_hh"))  # (dirs, 4H, H)
        self.register_buffer("b", torch.cat([stacked("bias_ih"), stacked("bias_hh")], 1))  # (dirs, 8H)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = x.transpose(0, 1)  # (T, B, input): ONNX's default layout
        steps, batch = x.shape[0], x.shape[1]
        y = torch.onnx.ops.symbolic(
            "LSTM", (x, self.w, self.r, self.b),
            {"hidden_size": self.hidden_size, "direction": "bidirectional" if self.directions == 2 else "forward"},
            dtype=x.dtype, shape=(steps, self.directions, batch, self.hidden_size), version=14)  # (T, dirs, B, H)
        return y.permute(2, 0, 1, 3).reshape(batch, steps, self.directions * self.hidden_size), None


def with_onnx_lstms(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.LSTM layers are OnnxLSTM (the original is left as it is)."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.LSTM):
                setattr(module, name, OnnxLSTM(child))
    return model


# ---- decoders with a key/value cache ------------------------------------------------------------------------

def _interleave(keys: list[torch.Tensor], values: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t for pair in zip(keys, values) for t in pair]  # k0, v0, k1, v1, ...


class KVEncoderGraph(nn.Module):
    """images -> memory and the per-layer cross-attention keys/values (what `init_cache` projects once)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.model.encode(images)  # (B, N, D)
        cache = self.model.init_cache(memory, 1)  # its self-attention slots are unused here (pruned)
        return (memory, *_interleave(cache.memory_k, cache.memory_v))  # memory, (B, h, N, D/h) x 2 x layers


class KVStepGraph(nn.Module):
    """One cached decoding step through the model's `decode_step` (see the module docstring for layouts)."""

    def __init__(self, model: nn.Module, cache: str):
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


def kv_decoder_metadata(model: nn.Module, cache: str) -> dict:
    """The metadata fields of a key/value-cache decoder (see runtime/format.py)."""
    attn = model.decoder[0].self_attn
    tok = model.tokenizer
    return {
        "decoding": "autoregressive",
        "max_steps": int(model.max_steps),
        "cache": cache,
        "decoder": {"kind": "transformer", "layers": len(model.decoder), "heads": int(attn.num_heads),
                    "head_dim": int(attn.head_dim), "num_classes": int(model.num_classes)},
        "tokens": {"eos": tok.eos_id, "bos": tok.bos_id, "pad": tok.pad_id},
    }


def export_kv_decoder(model: nn.Module, folder: Path, opset: int, cache: str, width_dim=None,
                      positions: int | None = None) -> dict[str, Path]:
    """Write the encoder and decoder-step graphs of a key/value-cache model (eval mode).

    width_dim: a torch.export.Dim for the image width (None: the configured width only); positions: the most
    memory positions the step graph accepts (None: the configured image's only)."""
    from masterocr.export import ExportError

    if cache not in ("concat", "fixed"):
        raise ExportError(f"cache layout {cache!r}: choose concat or fixed")
    Dim = torch.export.Dim
    layers = len(model.decoder)
    heads, head_dim = model.decoder[0].self_attn.num_heads, model.decoder[0].self_attn.head_dim
    height, width = (int(v) for v in model.img_size)
    steps = int(model.max_steps)
    batch = batch_dim()

    # Example inputs of batch 2 (0 and 1 would be specialised by torch.export).
    images = torch.zeros(2, model.in_channels, height, width)
    encoder = folder / GRAPH_FILES["encoder"]
    image_dims = {0: batch, **({3: width_dim} if width_dim is not None else {})}
    export_graph(KVEncoderGraph(model), (images,), encoder, [IMAGES], [MEMORY, *memory_kv_names(layers)],
                 {"images": image_dims}, opset)

    hf, wf = model.feature_size(height, width)
    n = hf * wf
    past_len = 2 if cache == "concat" else steps
    past = [torch.zeros(2, heads, past_len, head_dim) for _ in range(2 * layers)]
    memory_kv = [torch.zeros(2, heads, n, head_dim) for _ in range(2 * layers)]
    tokens = torch.full((2,), model.tokenizer.bos_id, dtype=torch.long)
    position = torch.tensor(past_len if cache == "concat" else 0, dtype=torch.long)
    past_dims = {0: batch, 2: Dim("past", min=0, max=steps - 1)} if cache == "concat" else {0: batch}
    memory_dims = {0: batch, **({2: Dim("positions", min=1, max=positions)} if positions else {})}
    step = folder / GRAPH_FILES["decoder_step"]
    export_graph(KVStepGraph(model, cache), (tokens, position, *past, *memory_kv), step,
                 [TOKENS, POSITION, *past_names(layers), *memory_kv_names(layers)],
                 [LOGITS, *present_names(layers), ATTENTION],
                 {"tokens": {0: batch}, "position": None, "tensors": tuple([past_dims] * (2 * layers) +
                                                                          [memory_dims] * (2 * layers))}, opset)
    return {"encoder": encoder, "decoder_step": step}


__all__ = ["MAX_BATCH", "batch_dim", "export_graph", "OnnxLSTM", "with_onnx_lstms", "KVEncoderGraph", "KVStepGraph",
           "kv_decoder_metadata", "export_kv_decoder"]
