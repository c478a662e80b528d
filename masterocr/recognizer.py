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
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from masterocr.data.image import (ROTATIONS, ImageSource, ImageTransform, OrientationViews, Rotate,  # noqa: F401
                                  rotate_image)
from masterocr.reading import ReadResult, read_batched

# Bundled model preferred by `load()` without a name, when several are bundled.
PREFERRED_DEFAULTS = ("master-small", "master", "master-tiny")
DECODE_METHODS = ("greedy", "beam")
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ORIENTATIONS = ("upright", "auto")


class Recognizer:
    """A model ready to read images: `read(x)` with a path, PIL image, NumPy array or bytes, or a list."""

    def __init__(self, model: torch.nn.Module, model_cfg: dict | None = None, device: str | torch.device = "cpu",
                 decode_method: str = "greedy", beam_width: int = 5, keep_aspect: bool | None = None,
                 batch_size: int = 32, precision: str = "fp32", orientation: str = "upright"):
        if decode_method not in DECODE_METHODS:
            raise ValueError(f"decode method {decode_method!r}: choose one of {DECODE_METHODS}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {sorted(_PRECISIONS)}")
        self.model = model  # decoding switches it to eval mode per call and restores the caller's mode
        self.model_cfg = dict(model_cfg or {})
        self.tokenizer = model.tokenizer
        self.decode_method = decode_method
        self.beam_width = int(beam_width)
        self.batch_size = max(1, int(batch_size))
        self.precision = precision
        if keep_aspect is None:
            keep_aspect = bool(self.model_cfg.get("keep_aspect", getattr(model, "keep_aspect", False)))
        height, width = (int(v) for v in model.img_size)
        self.transform = ImageTransform(height, width, keep_aspect=keep_aspect,
                                        grayscale=int(model.in_channels) == 1)
        self.orientation = orientation
        self._lock = threading.Lock()
        self.device = torch.device("cpu")
        self.to(device)

    # ---- configuration ----

    def to(self, device: str | torch.device) -> "Recognizer":
        """Move the model (e.g. `rec.to("cuda")`); returns self."""
        device = torch.device(device)
        with self._lock:
            self.model.to(device)
            self.device = device
        return self

    @property
    def img_size(self) -> tuple[int, int]:
        return self.transform.height, self.transform.width

    @property
    def keep_aspect(self) -> bool:
        return self.transform.keep_aspect

    @property
    def orientation(self) -> str:
        """"upright": read images as they are; "auto": read each in its four turns (0/90/180/270) and keep the
        most confident reading (4x the model work), for text of unknown orientation."""
        return self._orientation

    @orientation.setter
    def orientation(self, value: str) -> None:
        if value not in ORIENTATIONS:
            raise ValueError(f"orientation {value!r}: choose one of {ORIENTATIONS}")
        self._orientation = value
        self._input = self.make_transform()

    def make_transform(self, rotation: int = 0) -> ImageTransform | OrientationViews:
        """This recognizer's image pipeline, optionally rotating each image first (robustness tests); with
        orientation "auto" it gives each image's four turns (see OrientationViews)."""
        t = self.transform
        if self.orientation == "auto":
            return OrientationViews(t, rotation)
        return ImageTransform(t.height, t.width, keep_aspect=t.keep_aspect, grayscale=t.grayscale,
                              augment=Rotate(rotation) if rotation % 360 else None, mean=t.mean, std=t.std)

    def _autocast(self):
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ---- the model call ----

    def predict(self, images: torch.Tensor, need_attention: bool = True) -> list[ReadResult]:
        """Read a preprocessed batch: images (B, C, H, W) as made by `self.transform`.

        need_attention=False skips collecting the cross-attention maps (evaluation does not need them).
        """
        from masterocr.decoding import decode

        if images.dim() == 5:  # (B, 4, C, H, W): each image in its four turns (orientation search)
            batch, views = images.shape[:2]
            flat = self.predict(images.flatten(0, 1), need_attention)  # B * 4 readings
            out = []
            for i in range(batch):
                group = flat[i * views:(i + 1) * views]
                best = max(range(views), key=lambda v: group[v].confidence)  # the most confident turn
                group[best].orientation = ROTATIONS[best]
                out.append(group[best])
            return out
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W) or (B, 4, C, H, W), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            return []
        with self._lock, torch.inference_mode(), self._autocast():
            images = images.to(self.device, non_blocking=True)
            result = decode(self.model, images, method=self.decode_method, beam_width=self.beam_width,
                            need_attention=need_attention)
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

    # ---- reading ----

    def preprocess(self, source: ImageSource) -> torch.Tensor:
        """One image -> (C, H, W) tensor, or (4, C, H, W) with orientation "auto". Raises ImageError naming
        the input."""
        return self._input(source)

    def read(self, x: ImageSource | Sequence[ImageSource], batch_size: int | None = None,
             on_error: str = "auto") -> ReadResult | list[ReadResult]:
        """Read one image or a list of images (paths, PIL images, NumPy arrays, bytes), batched.

        A list gives one ReadResult per input, in order; an input that cannot be read gives a result whose
        `error` names it (empty text), and the others are still read. on_error="raise" raises ImageError
        instead; "auto" (default) raises for a single input and skips in a list (see reading.read_batched).
        """
        return read_batched(x, self.preprocess, self.predict_batch, batch_size or self.batch_size, on_error)

    def predict_batch(self, prepared: list[torch.Tensor], need_attention: bool = True) -> list[ReadResult]:
        """Read a list of `preprocess` outputs as one batch (what a server gathering requests calls)."""
        return self.predict(torch.stack(prepared), need_attention)  # (B, C, H, W) or (B, 4, C, H, W)

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


def stored_keep_aspect(name_or_path: str | os.PathLike) -> bool | None:
    """The resize mode the weights were trained with, when their metadata records it.

    The model config has no place for preprocessing, so it is read from the safetensors metadata's `extra`
    ({"keep_aspect": bool}, or {"data": {"keep_aspect": bool}}); None when absent (then: stretch, MASTER's way).
    """
    import json

    from masterocr.weights import resolve_weights_path

    path = resolve_weights_path(name_or_path)
    if path.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            extra = json.loads((f.metadata() or {}).get("extra", "{}"))
    except Exception:  # unreadable metadata: load_model has already validated the file itself
        return None
    if not isinstance(extra, dict):
        return None
    value = extra.get("keep_aspect", (extra.get("data") or {}).get("keep_aspect")
                      if isinstance(extra.get("data"), dict) else None)
    return bool(value) if value is not None else None


def load(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         decode_method: str = "greedy", beam_width: int = 5, keep_aspect: bool | None = None,
         batch_size: int = 32, precision: str = "fp32", use_ema: bool = True,
         orientation: str = "upright") -> Recognizer:
    """A Recognizer from a bundled model name, a .safetensors file or a training checkpoint (.ckpt).

    Without a name, the bundled model is used (an error says how to pass a path when none is bundled).
    orientation="auto" reads every image in its four turns and keeps the most confident reading.
    """
    from masterocr.models.layers import fold_batchnorm
    from masterocr.weights import load_model

    if name_or_path is None:
        name_or_path = default_model_name()
    model, model_cfg = load_model(name_or_path, device="cpu", use_ema=use_ema)
    # Inference only: fold BatchNorm into the convs and use channels_last (both measured faster on CPU).
    model.eval()
    fold_batchnorm(model)
    model.to(memory_format=torch.channels_last)
    if keep_aspect is None:
        keep_aspect = stored_keep_aspect(name_or_path)
    return Recognizer(model, model_cfg, device=device, decode_method=decode_method, beam_width=beam_width,
                      keep_aspect=keep_aspect, batch_size=batch_size, precision=precision, orientation=orientation)


# ---- attention pictures ---------------------------------------------------------------------------------

_FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)


def _font(size: int):
    from PIL import ImageFont

    for path in _FONT_PATHS:
        if os.path.isfile(path):
            return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> RGB uint8 (H, W, 3) on a blue-cyan-yellow-red scale (jet-like)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def _attention_on_image(att: np.ndarray, img_size: tuple[int, int], keep_aspect: bool,
                        image_size: tuple[int, int], display: tuple[int, int]) -> np.ndarray:
    """Map one (Hf, Wf) attention map from the model's input canvas onto the displayed original image.

    The map covers the resized (H, W) input; with keep_aspect only the left part of it holds the image
    (the rest is padding), so that part is cut out before scaling to the display size. Returns (h, w) in [0, 1].
    """
    from masterocr.data.image import content_width

    height, width = img_size
    canvas = Image.fromarray(np.asarray(att, dtype=np.float32), mode="F").resize((width, height), Image.BILINEAR)
    if keep_aspect:
        canvas = canvas.crop((0, 0, content_width(image_size, height, width, keep_aspect), height))
    out = np.asarray(canvas.resize(display, Image.BILINEAR), dtype=np.float32)
    top = float(out.max())
    return out / top if top > 0 else out


def attention_figure(image: ImageSource, result: ReadResult, img_size: tuple[int, int], keep_aspect: bool = False,
                     row_height: int = 64, max_width: int = 640, alpha: float = 0.55) -> Image.Image:
    """A picture of the decoder's attention: the image with the reading on top, then one row per character
    with its attention as a heat-map overlay, labelled with the character and its probability."""
    from PIL import ImageDraw

    from masterocr.data.image import load_image

    img = load_image(image)
    w = max(row_height // 2, min(max_width, round(img.width * row_height / img.height)))
    shown = img.resize((w, row_height), Image.BICUBIC)
    base = np.asarray(shown, dtype=np.float32)
    font = _font(max(10, row_height // 4))
    margin, gap = 110, 2
    n = 0 if result.attention is None else len(result.attention)
    fig = Image.new("RGB", (margin + w, (row_height + gap) * (n + 1)), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    fig.paste(shown, (margin, 0))
    draw.text((4, 4), "read:", fill=(0, 0, 0), font=font)
    draw.text((4, row_height // 2), f"{result.text!r}"[:14], fill=(0, 0, 0), font=font)
    draw.text((4, row_height - row_height // 4 - 2), f"p={result.confidence:.2f}", fill=(80, 80, 80), font=font)
    for k in range(n):
        heat = _attention_on_image(result.attention[k], img_size, keep_aspect, img.size, (w, row_height))
        mix = (1 - alpha * heat[..., None]) * base + alpha * heat[..., None] * heat_colors(heat)
        top = (row_height + gap) * (k + 1)
        fig.paste(Image.fromarray(mix.clip(0, 255).astype(np.uint8)), (margin, top))
        char = result.text[k] if k < len(result.text) else "?"
        prob = result.char_probs[k] if k < len(result.char_probs) else float("nan")
        draw.text((4, top + 4), f"{k + 1}: {char}", fill=(0, 0, 0), font=_font(max(12, row_height // 3)))
        draw.text((4, top + row_height // 2 + 2), f"p={prob:.2f}", fill=(80, 80, 80), font=font)
    return fig
