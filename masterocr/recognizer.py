"""The public Python API: `masterocr.load(name or path)` -> `Recognizer.read(images)`.

A Recognizer holds a model, its tokenizer and the one image pipeline (ImageTransform) configured from the
model (img_size, in_channels) and the config's keep-aspect setting. Thread safety: reads may be issued from
several threads at once. Images are decoded and resized outside any lock (so threads overlap that work);
the model call itself runs under a lock, because decoding may keep per-call state on the model's modules
(e.g. a key/value cache) and `to()` may move the weights mid-call.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import torch

from masterocr.data.image import ROTATIONS, ImageSource, ImageTransform, rotate_image  # noqa: F401
from masterocr.figures import attention_figure, heat_colors  # noqa: F401 (re-exported: torch-free home)
from masterocr.reading import ORIENTATIONS, ReadResult, RecognizerBase  # noqa: F401 (ORIENTATIONS re-exported)

# Bundled model preferred by `load()` without a name, when several are bundled.
PREFERRED_DEFAULTS = ("master-small", "master", "master-tiny")
DECODE_METHODS = ("greedy", "beam", "nar")
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device(device: str | torch.device) -> torch.device:
    """torch.device(device), or ValueError saying why it cannot be used here: not a device name, a torch built
    without CUDA, no GPU visible, or no GPU of that index."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {str(device)!r}: not a device name (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built for CPU only" if torch.version.cuda is None
                   else "no CUDA GPU is visible to this process")
            raise ValueError(f"device {str(device)!r}: {why} (torch {torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} GPU(s) visible "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as e:
            raise ValueError(f"device {str(device)!r}: not usable here ({str(e).splitlines()[0]})") from None
    return dev


class Recognizer(RecognizerBase):
    """A model ready to read images: `read(x)` with a path, PIL image, NumPy array or bytes, or a list.

    The image pipeline, orientation search and read loop are RecognizerBase's (shared with the runtime's
    OnnxRecognizer); this class runs the model with torch.
    """

    def __init__(self, model: torch.nn.Module, model_cfg: dict | None = None, device: str | torch.device = "cpu",
                 decode_method: str = "greedy", beam_width: int = 5, keep_aspect: bool | None = None,
                 batch_size: int = 32, precision: str = "fp32", refine_iters: int | None = None,
                 pad: str = "zero", width_step: int = 0, orientation: str = "upright"):
        from masterocr.decoding import check_decoding

        if decode_method not in DECODE_METHODS:
            raise ValueError(f"decode method {decode_method!r}: choose one of {DECODE_METHODS}")
        check_decoding(model, decode_method, refine_iters)  # e.g. "nar" on a model without a parallel decoder
        if precision == "bf16-checked":
            raise ValueError("precision 'bf16-checked' runs on the ONNX runtime: load an export folder "
                             "(masterocr export) or read with --backend onnx")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {sorted(_PRECISIONS)}")
        self.model = model  # decoding switches it to eval mode per call and restores the caller's mode
        self.model_cfg = dict(model_cfg or {})
        self.tokenizer = model.tokenizer
        self.decode_method = decode_method
        self.beam_width = int(beam_width)
        self.refine_iters = None if refine_iters is None else int(refine_iters)  # None: the model's default
        if int(batch_size) < 1:
            raise ValueError(f"batch_size {batch_size}: must be 1 or more")
        self.batch_size = int(batch_size)
        self.precision = precision
        if keep_aspect is None:
            keep_aspect = bool(self.model_cfg.get("keep_aspect", getattr(model, "keep_aspect", False)))
        height, width = (int(v) for v in model.img_size)
        self.transform = ImageTransform(height, width, keep_aspect=keep_aspect,
                                        grayscale=int(model.in_channels) == 1, pad=pad, width_step=width_step)
        self.orientation = orientation
        self._lock = threading.Lock()
        self.device = torch.device("cpu")
        self.to(device)

    # ---- configuration ----

    def to(self, device: str | torch.device) -> "Recognizer":
        """Move the model (e.g. `rec.to("cuda")`); returns self. ValueError for a device this torch lacks."""
        device = check_device(device)
        with self._lock:
            self.model.to(device)
            self.device = device
        return self

    def _from_array(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array)

    def _autocast(self):
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ---- the model call ----

    def _predict(self, images: torch.Tensor, need_attention: bool = True) -> list[ReadResult]:
        """Read a (B, C, H, W) batch made by `self.transform` (RecognizerBase.predict checks the shape and
        handles orientation search). need_attention=False skips collecting the cross-attention maps."""
        from masterocr.decoding import decode

        with self._lock, torch.inference_mode(), self._autocast():
            images = images.to(self.device, non_blocking=True)
            result = decode(self.model, images, method=self.decode_method, beam_width=self.beam_width,
                            need_attention=need_attention, refine_iters=self.refine_iters)
            result.probs = result.probs.float().cpu()                 # (B, T, num_classes)
            result.token_ids = result.token_ids.cpu()                 # (B, T)
            attention = None if result.attention is None else result.attention.float().cpu()  # (B, T, Hf, Wf)
        # Texts from the chosen tokens (equal to the arg-max path for greedy; right for beam search too).
        decoded = result.decoded(self.tokenizer)
        out = []
        for i, d in enumerate(decoded):
            att = None
            if attention is not None:
                att = attention[i, : len(d.char_probs)].numpy()        # (len(text), Hf, Wf)
            out.append(ReadResult(d.text, float(d.confidence), list(d.char_probs), att))
        return out

    def __repr__(self) -> str:
        name = self.model_cfg.get("name", type(self.model).__name__)
        return (f"Recognizer({name}, img_size={self.img_size}, keep_aspect={self.keep_aspect}, "
                f"charset={len(self.tokenizer.charset)} chars, device={self.device}, decode={self.decode_method}, "
                f"orientation={self.orientation})")


def default_model_name() -> str:
    """The bundled model `load()` uses without a name; a clear error when none is bundled."""
    from masterocr.weights import BUNDLED_DIR, bundled_names

    names = bundled_names()
    if not names:
        raise FileNotFoundError(
            f"no model is bundled with this installation of masterocr ({BUNDLED_DIR} holds no .safetensors); "
            "pass weights explicitly, e.g. masterocr.load('path/to/model.safetensors') or a training "
            "checkpoint masterocr.load('runs/x/last.ckpt'), or `--model PATH` on the command line")
    for name in PREFERRED_DEFAULTS:
        if name in names:
            return name
    return names[0]


# How weights must be fed, kept in their metadata's extra; orientation: the reading mode they were trained for
# ("tall" for weights trained with data.tall_turn), the default of load() for them.
PREPROCESSING = ("keep_aspect", "pad", "width_step", "orientation")


def stored_preprocessing(name_or_path: str | os.PathLike) -> dict:
    """How the weights' images must be prepared, when their metadata records it: {"keep_aspect": bool,
    "pad": "zero" | "edge", "width_step": int}, any of them absent when unrecorded.

    The model config has no place for preprocessing, so it is read from the safetensors metadata's `extra`
    (top level, or under "data"); {} for checkpoints and files without it (then: stretch, MASTER's way).
    """
    import json

    from masterocr.weights import resolve_weights_path

    path = resolve_weights_path(name_or_path)
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            extra = json.loads((f.metadata() or {}).get("extra", "{}"))
    except Exception:  # unreadable metadata: load_model has already validated the file itself
        return {}
    if not isinstance(extra, dict):
        return {}
    data = extra.get("data") if isinstance(extra.get("data"), dict) else {}
    found = {}
    for key in PREPROCESSING:
        value = extra.get(key, data.get(key))
        if value is not None:
            found[key] = value
    if "keep_aspect" in found:
        found["keep_aspect"] = bool(found["keep_aspect"])
    if "width_step" in found:
        found["width_step"] = int(found["width_step"])
    if found.get("orientation") not in ORIENTATIONS:
        found.pop("orientation", None)
    return found


def stored_keep_aspect(name_or_path: str | os.PathLike) -> bool | None:
    """The resize mode the weights were trained with, when their metadata records it (else None)."""
    return stored_preprocessing(name_or_path).get("keep_aspect")


def load(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         decode_method: str = "greedy", beam_width: int = 5, keep_aspect: bool | None = None,
         batch_size: int = 32, precision: str = "fp32", use_ema: bool = True,
         refine_iters: int | None = None, orientation: str | None = None) -> Recognizer:
    """A Recognizer from a bundled model name, a .safetensors file or a training checkpoint (.ckpt).

    Without a name, the bundled model is used (an error says how to pass a path when none is bundled).
    decode_method: "greedy", "beam" or "nar" (models with a parallel decoder, e.g. PARSeq); refine_iters:
    cloze refinement passes after decoding (models that refine; None: the model's own default).
    orientation: "upright", "tall" (crops taller than wide also read turned a quarter) or "auto" (every image
    read in its four turns, the most confident reading kept); None: what the weights were trained for ("tall"
    when their metadata says so, else "upright").
    """
    from masterocr.models.layers import fold_batchnorm
    from masterocr.weights import load_model

    check_device(device)  # before the weights are read: a wrong device is the quicker message
    if name_or_path is None:
        name_or_path = default_model_name()
    model, model_cfg = load_model(name_or_path, device="cpu", use_ema=use_ema)
    # Inference only: fold BatchNorm into the convs and use channels_last (both measured faster on CPU).
    model.eval()
    fold_batchnorm(model)
    model.to(memory_format=torch.channels_last)
    stored = stored_preprocessing(name_or_path)
    if keep_aspect is None:
        keep_aspect = stored.get("keep_aspect")
    return Recognizer(model, model_cfg, device=device, decode_method=decode_method, beam_width=beam_width,
                      keep_aspect=keep_aspect, batch_size=batch_size, precision=precision,
                      refine_iters=refine_iters, pad=stored.get("pad", "zero"),
                      width_step=stored.get("width_step", 0),
                      orientation=orientation or stored.get("orientation", "upright"))
