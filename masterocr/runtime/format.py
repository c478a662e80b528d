"""The export folder format, shared by the writer (masterocr.export, torch) and the reader (this runtime).

An export is a folder of ONNX graphs. Each graph carries the whole description of the model in its metadata
(`metadata_props`, key "masterocr", a JSON object), so the folder alone is enough to read images:

    format, format_version      "masterocr-onnx", 1
    role                        which graph this is (a key of GRAPH_FILES)
    graphs                      {role: file name} of every graph of the export
    model_name, family          e.g. "master-small", "master" (the model config's name)
    masterocr_version           the version that exported it
    decoding                    how the runtime reads the graphs (ROLES_BY_DECODING):
                                  "autoregressive"  encoder + cached decoder step (MASTER, PARSeq, TRBA, seq2seq),
                                                    and a refine graph where the model has a cloze pass (PARSeq)
                                  "parallel"        one graph, images -> logits of every position (ViTSTR)
                                  "ctc"             one graph, images -> frame logits (CRNN)
    charset, max_label_length   the tokenizer (attention tokens: EOS 0, characters 1..N, BOS N+1, PAD N+2;
                                CTC: blank 0, characters 1..N)
    img_size, in_channels       the model's input (height, width) and channels
    keep_aspect, mean, std      the image pipeline: resize mode and normalisation (x/255 - mean) / std
    pad, width_step             how a kept-aspect image is padded ("zero" or "edge") and the width step of
                                variable-width canvases (0: the fixed width), as data/image.py's resize
    orientation                 optional: the reading mode the weights were trained for ("upright", "tall":
                                crops taller than wide also read turned a quarter, "auto"); the runtime's default
    width_range                 [min, max] input widths the graphs accept (null: the fixed width only)
    feature_height              rows of the feature map the attention is drawn on (columns follow the width)
    max_steps                   decoding steps at most (labels + EOS; the positions of a parallel graph)
    tokens                      {"eos", "bos", "pad"} ids (attention tokens) or {"blank"} (CTC)
    num_classes                 classes of the logits (EOS or blank, and the characters)
    decoder                     autoregressive: what the decoder step carries from one step to the next
                                  {"kind": "transformer", "layers", "heads", "head_dim", "num_classes"}: per layer,
                                  self-attention keys/values (the cache) and the memory's keys/values
                                  {"kind": "rnn", "cell": "lstm" | "gru", "hidden_size", "num_classes"}: the
                                  recurrent state and the memory with its attention projection
                                (an export without "kind" is a transformer: format 1 as MASTER first wrote it)
    decoding_defaults           {"method": "greedy", "beam_width": 5, "refine_iters": 0}
    cache                       self-attention cache layout of a transformer decoder step: "concat" (past of
                                length t in, t + 1 out) or "fixed" (max_steps slots in and out, position t
                                written); null for the other decoders
    precision                   "fp32" or "int8" (and how it was quantized, under "quantization")
    opset                       the ONNX opset of the default domain
    model_config                the resolved model config, for provenance

Imports neither torch nor onnx.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT = "masterocr-onnx"
FORMAT_VERSION = 1
METADATA_KEY = "masterocr"
# ONNX opsets of the default domain that exports are written in and the runtime accepts. 17 is the first with
# LayerNormalization; the top is the newest opset this format was tested with under ONNX Runtime.
MIN_OPSET, MAX_OPSET = 17, 21
DEFAULT_OPSET = 18

# Graph file names by role; an export's entry graph is the first of ENTRY_ROLES present in the folder.
GRAPH_FILES = {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx", "refine": "refine.onnx",
               "model": "model.onnx"}
ENTRY_ROLES = ("encoder", "model")
# The graphs each decoding kind needs, and those it may add.
ROLES_BY_DECODING = {"autoregressive": ("encoder", "decoder_step"), "parallel": ("model",), "ctc": ("model",)}
OPTIONAL_ROLES = {"autoregressive": ("refine",)}
DECODER_KINDS = ("transformer", "rnn")
CACHE_LAYOUTS = ("concat", "fixed")

# Fields that every graph of one export must hold with the same value (a graph from another export fails).
SHARED_FIELDS = ("format", "format_version", "graphs", "model_name", "family", "decoding", "charset",
                 "max_label_length", "img_size", "in_channels", "keep_aspect", "mean", "std", "pad", "width_step",
                 "width_range", "feature_height", "max_steps", "cache", "precision", "model_config", "export_id",
                 "orientation", "tokens", "num_classes", "decoder")
REQUIRED_FIELDS = ("format", "format_version", "graphs", "model_name", "family", "decoding", "charset",
                   "max_label_length", "img_size", "in_channels", "keep_aspect", "mean", "std", "width_range",
                   "precision", "model_config", "export_id", "tokens", "role", "masterocr_version",
                   "decoding_defaults", "opset")
# Fields a decoding kind needs besides REQUIRED_FIELDS.
REQUIRED_BY_DECODING = {"autoregressive": ("feature_height", "max_steps", "cache", "decoder"),
                        "parallel": ("feature_height", "max_steps", "num_classes"),
                        "ctc": ("num_classes",)}

# Tensor names of the graphs (per decoder layer i for the transformer caches).
IMAGES = "images"
MEMORY = "memory"
MEMORY_PROJ = "memory_proj"  # an RNN decoder's attention projection of the memory
TOKENS, POSITION = "tokens", "position"
LOGITS, ATTENTION = "logits", "attention"


def memory_kv_names(layers: int) -> list[str]:
    """Cross-attention keys/values of the image memory, projected once by the encoder: k0, v0, k1, v1, ..."""
    return [f"memory_{kv}_{i}" for i in range(layers) for kv in "kv"]


def past_names(layers: int) -> list[str]:
    return [f"past_{kv}_{i}" for i in range(layers) for kv in "kv"]


def present_names(layers: int) -> list[str]:
    return [f"present_{kv}_{i}" for i in range(layers) for kv in "kv"]


def rnn_state_names(cell: str) -> list[str]:
    """The recurrent state an RNN decoder step carries: the hidden state, and an LSTM's cell state."""
    return ["hidden", "cell"] if cell == "lstm" else ["hidden"]


@dataclass(frozen=True)
class StepIO:
    """The tensors of an autoregressive export, from its metadata's "decoder" field.

    memory: what the encoder gives the step once per image (outputs of the encoder, inputs of the step);
    past/present: the state the step reads and writes back (inputs/outputs of the step, in this order);
    state_shapes: the shape of each past per batch row at the first step; position: whether the step takes
    the position as an input (a recurrent state knows where it is)."""

    memory: list[str]
    past: list[str]
    present: list[str]
    state_shapes: list[tuple[int, ...]]
    position: bool

    @property
    def step_inputs(self) -> list[str]:
        return [TOKENS, *([POSITION] if self.position else []), *self.past, *self.memory]

    @property
    def step_outputs(self) -> list[str]:
        return [LOGITS, *self.present, ATTENTION]


def step_io(decoder: dict, cache: str | None, max_steps: int) -> StepIO:
    """StepIO of a decoder description (KeyError/TypeError/ValueError when it is malformed)."""
    kind = decoder.get("kind", "transformer")
    if kind == "transformer":
        layers, heads, head_dim = int(decoder["layers"]), int(decoder["heads"]), int(decoder["head_dim"])
        if cache not in CACHE_LAYOUTS:
            raise ValueError(f"cache layout {cache!r} is not one of {CACHE_LAYOUTS}")
        length = 0 if cache == "concat" else int(max_steps)
        return StepIO(memory_kv_names(layers), past_names(layers), present_names(layers),
                      [(heads, length, head_dim)] * (2 * layers), True)
    if kind == "rnn":
        names = rnn_state_names(str(decoder["cell"]))
        hidden = int(decoder["hidden_size"])
        return StepIO([MEMORY, MEMORY_PROJ], [f"past_{n}" for n in names], [f"present_{n}" for n in names],
                      [(hidden,)] * len(names), False)
    raise ValueError(f"decoder kind {kind!r} is not one of {DECODER_KINDS}")


__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET", "GRAPH_FILES",
           "ENTRY_ROLES", "ROLES_BY_DECODING", "OPTIONAL_ROLES", "DECODER_KINDS", "CACHE_LAYOUTS", "SHARED_FIELDS",
           "REQUIRED_FIELDS", "REQUIRED_BY_DECODING", "StepIO", "step_io", "memory_kv_names", "past_names",
           "present_names", "rnn_state_names"]
