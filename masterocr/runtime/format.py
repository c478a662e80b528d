"""The export folder format, shared by the writer (masterocr.export, torch) and the reader (this runtime).

An export is a folder of ONNX graphs. Each graph carries the whole description of the model in its metadata
(`metadata_props`, key "masterocr", a JSON object), so the folder alone is enough to read images:

    format, format_version      "masterocr-onnx", 1
    role                        which graph this is ("encoder", "decoder_step"; "model" for one-graph families)
    graphs                      {role: file name} of every graph of the export
    model_name, family          e.g. "master-small", "master" (the model config's name)
    masterocr_version           the version that exported it
    decoding                    how the runtime replays decoding: "autoregressive" (encoder + cached step)
    charset, max_label_length   the tokenizer (attention tokens: EOS 0, characters 1..N, BOS N+1, PAD N+2)
    img_size, in_channels       the model's input (height, width) and channels
    keep_aspect, mean, std      the image pipeline: resize mode and normalisation (x/255 - mean) / std
    pad, width_step             how a kept-aspect image is padded ("zero" or "edge") and the width step of
                                variable-width canvases (0: the fixed width), as data/image.py's resize
    width_range                 [min, max] input widths the graphs accept (null: the fixed width only)
    feature_height              rows of the feature map the attention is drawn on (columns follow the width)
    max_steps                   decoding steps at most (labels + EOS)
    tokens, decoder             autoregressive: {"eos", "bos", "pad"} ids; {"layers", "heads", "head_dim",
                                "num_classes"} of the decoder step
    decoding_defaults           {"method": "greedy", "beam_width": 5}
    cache                       self-attention cache layout of the decoder step: "concat" (past of length t in,
                                t + 1 out) or "fixed" (max_steps slots in and out, position t written)
    precision                   "fp32" or "int8" (and how it was quantized, under "quantization")
    opset                       the ONNX opset of the default domain
    model_config                the resolved model config, for provenance

Imports neither torch nor onnx.
"""

from __future__ import annotations

FORMAT = "masterocr-onnx"
FORMAT_VERSION = 1
METADATA_KEY = "masterocr"
# ONNX opsets of the default domain that exports are written in and the runtime accepts. 17 is the first with
# LayerNormalization; the top is the newest opset this format was tested with under ONNX Runtime.
MIN_OPSET, MAX_OPSET = 17, 21
DEFAULT_OPSET = 18

# Graph file names by role; an export's entry graph is the first of ENTRY_ROLES present in the folder.
GRAPH_FILES = {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx", "model": "model.onnx"}
ENTRY_ROLES = ("encoder", "model")
# The graphs each decoding kind needs.
ROLES_BY_DECODING = {"autoregressive": ("encoder", "decoder_step")}
CACHE_LAYOUTS = ("concat", "fixed")

# Fields that every graph of one export must hold with the same value (a graph from another export fails).
SHARED_FIELDS = ("format", "format_version", "graphs", "model_name", "family", "decoding", "charset",
                 "max_label_length", "img_size", "in_channels", "keep_aspect", "mean", "std", "pad", "width_step",
                 "width_range",
                 "feature_height", "max_steps", "cache", "precision", "model_config", "export_id", "tokens",
                 "decoder")
REQUIRED_FIELDS = SHARED_FIELDS + ("role", "masterocr_version", "decoding_defaults", "opset")

# Tensor names of the autoregressive graphs (per decoder layer i).
IMAGES = "images"
MEMORY = "memory"
TOKENS, POSITION = "tokens", "position"
LOGITS, ATTENTION = "logits", "attention"


def memory_kv_names(layers: int) -> list[str]:
    """Cross-attention keys/values of the image memory, projected once by the encoder: k0, v0, k1, v1, ..."""
    return [f"memory_{kv}_{i}" for i in range(layers) for kv in "kv"]


def past_names(layers: int) -> list[str]:
    return [f"past_{kv}_{i}" for i in range(layers) for kv in "kv"]


def present_names(layers: int) -> list[str]:
    return [f"present_{kv}_{i}" for i in range(layers) for kv in "kv"]


__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET", "GRAPH_FILES",
           "ENTRY_ROLES", "ROLES_BY_DECODING", "CACHE_LAYOUTS", "SHARED_FIELDS", "REQUIRED_FIELDS",
           "memory_kv_names", "past_names", "present_names"]
