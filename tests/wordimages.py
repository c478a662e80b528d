"""Black-on-white word images for tests that train or read: DejaVu Sans, else Pillow's default font."""

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def word_font(size: int = 28) -> ImageFont.ImageFont:
    return ImageFont.truetype(FONT, size) if os.path.exists(FONT) else ImageFont.load_default(size)


def render_word(word: str, size: int = 28, margin: int = 4) -> Image.Image:
    """The word tightly cropped with a white margin of `margin` pixels."""
    font = word_font(size)
    left, top, right, bottom = font.getbbox(word)
    img = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), (255, 255, 255))
    ImageDraw.Draw(img).text((margin - left, margin - top), word, font=font, fill=(0, 0, 0))
    return img


def render_words(folder: Path, words) -> Path:
    """A labels.tsv folder of black-on-white word images (images/<i>.png, 120x40)."""
    (folder / "images").mkdir(parents=True)
    font = word_font(26)
    lines = []
    for i, word in enumerate(words):
        img = Image.new("RGB", (120, 40), "white")
        ImageDraw.Draw(img).text((8, 4), word, fill="black", font=font)
        img.save(folder / "images" / f"{i}.png")
        lines.append(f"images/{i}.png\t{word}\n")
    (folder / "labels.tsv").write_text("".join(lines))
    return folder
