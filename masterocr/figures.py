"""Pictures of a reading: the decoder's attention per character over the image. Pillow + NumPy only, so the
torch Recognizer and the torch-free runtime draw the same figures."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from masterocr.data.image import ImageSource
from masterocr.reading import ReadResult

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
