"""Contact sheets: word images in a grid with their labels underneath, because people would rather look.

Used by `masterocr data inspect`, by the synthetic-data preview and anywhere a set of crops needs checking.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .image import ImageError, ImageSource, load_image

FONT_NAMES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# DejaVu has no CJK glyphs: labels with CJK/kana/hangul use the first of these that is installed.
WIDE_FONT_NAMES = ("wqy-microhei.ttc", "wqy-zenhei.ttc", "NotoSansCJK-Regular.ttc", "NotoSansSC-Regular.otf",
                   "DroidSansFallbackFull.ttf", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                   "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
WIDE_SCRIPTS_START = 0x2E80  # CJK radicals onwards: CJK, kana, hangul, fullwidth forms
_MISSING = "(unreadable)"


@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans at `size` pixels (wide Unicode coverage), else Pillow's built-in font."""
    for name in FONT_NAMES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


@lru_cache(maxsize=8)
def _wide_font(size: int):
    for name in WIDE_FONT_NAMES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return None


def font_for(text: str, size: int):
    """label_font, or an installed CJK font when `text` holds CJK/kana/hangul characters."""
    if any(ord(c) >= WIDE_SCRIPTS_START for c in text):
        wide = _wide_font(size)
        if wide is not None:
            return wide
    return label_font(size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Cut `text` with an ellipsis so it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def make_montage(items: Sequence[tuple[ImageSource | None, str]], columns: int = 4, cell_height: int = 48,
                 cell_width: int | None = None, font_size: int | None = None, padding: int = 6,
                 background: str | tuple = "white") -> Image.Image:
    """Grid of images with each label written under its image.

    items: (image, label) pairs; an image may be a PIL image or anything load_image reads, or None for a
    sample that could not be read (drawn as a grey box). A label may hold several lines ("gt\\npred").
    Images are scaled to fit `cell_height` x `cell_width` (default 4 x height) keeping their aspect ratio.
    """
    if not items:
        raise ValueError("make_montage: no items to draw")
    columns = max(1, min(int(columns), len(items)))
    cell_width = int(cell_width or 4 * cell_height)
    font_size = int(font_size or max(10, round(cell_height * 0.35)))
    font = label_font(font_size)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.size, 0)
    line_height = ascent + descent + 2
    max_lines = max(max(1, len(str(label).split("\n"))) for _, label in items)
    box_w, box_h = cell_width + 2 * padding, cell_height + max_lines * line_height + 2 * padding
    rows = (len(items) + columns - 1) // columns

    sheet = Image.new("RGB", (columns * box_w, rows * box_h), background)
    draw = ImageDraw.Draw(sheet)
    for i, (source, label) in enumerate(items):
        x0, y0 = (i % columns) * box_w + padding, (i // columns) * box_h + padding
        img = None
        if source is not None:
            try:
                img = load_image(source)
            except ImageError:
                img = None
        if img is None:
            draw.rectangle([x0, y0, x0 + cell_width - 1, y0 + cell_height - 1], fill=(200, 200, 200))
            draw.text((x0 + 4, y0 + 4), _MISSING, fill=(90, 90, 90), font=font)
        else:
            scale = min(cell_height / img.height, cell_width / img.width)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.BICUBIC)
            sheet.paste(img, (x0 + (cell_width - size[0]) // 2, y0 + (cell_height - size[1]) // 2))
        lines = str(label).split("\n") if label != "" else ["(empty)"]
        for j, line in enumerate(lines):
            line_font = font_for(line, font_size)
            text = _fit_text(draw, line, line_font, cell_width)
            draw.text((x0, y0 + cell_height + 2 + j * line_height), text, fill=(0, 0, 0), font=line_font)
        draw.rectangle([x0 - padding, y0 - padding, x0 - padding + box_w - 1, y0 - padding + box_h - 1],
                       outline=(220, 220, 220))
    return sheet
