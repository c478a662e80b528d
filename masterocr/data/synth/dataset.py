"""SyntheticDataset: an endless, seedable map-style dataset of rendered words that mixes with the others.

Sample i is a pure function of (seed, i): its Generator is derived from both, so any DataLoader worker, in any
order, after any number of other samples, renders the same pixels and label. `length` is only the size of an
epoch: every index >= 0 is valid.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ...charset import DEFAULT_MAX_LENGTH
from ..image import ImageTransform, to_array
from . import imageops as ops
from .config import ConfigSpec
from .render import FontSpec, Renderer, SampleStreams, sample_rng


def stretches_only(transform) -> bool:
    """Whether `transform` only stretches an RGB image to its size and normalises it (no augmentation, no
    keep-aspect canvas, no turn, no grey): then a rendered array takes a short path with no PIL image."""
    return (type(transform) is ImageTransform and transform.augment is None and not transform.keep_aspect
            and not transform.grayscale and not transform.tall_turn)


def stretch(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (height, width, 3): bicubic, or area means where it shrinks by 2 or more (without
    aliasing; they cost twice as much)."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    shrink = w >= 2 * width or h >= 2 * height
    return ops.resize(pixels, (width, height), "area" if shrink else "cubic")


class SyntheticDataset(Dataset):
    """`dataset[i]` -> (image, label, name): the image through `transform` (an ImageTransform gives a (C, H, W)
    tensor) or an RGB PIL image when transform is None; name is "synth:<seed>:<i>", like the names of the
    file and LMDB datasets, so bad samples can be traced and re-rendered.

    Args:
        charset: charset spec (load_charset): labels only use its characters (case-folded for 36).
        transform: e.g. masterocr.data.image.ImageTransform(h, w); its height is the render height.
        length: epoch size.
        seed: dataset seed.
        config: SynthConfig, dict, YAML/JSON path or `key=value` overrides (see synth.config).
        fonts: a FontSet, font files/folders, or None for the configured/system font folders.
        max_length: longest label.
        height: render height when there is no transform (default 32).
    """

    def __init__(self, charset: str | Sequence[str] = "94", transform: Callable | None = None,
                 length: int = 1_000_000, seed: int = 0, config: ConfigSpec = None, fonts: FontSpec = None,
                 max_length: int = DEFAULT_MAX_LENGTH, height: int | None = None):
        if length < 1:
            raise ValueError(f"length {length}: must be >= 1")
        if height is None:
            height = getattr(transform, "height", None) or 32
        self.renderer = Renderer(charset, height=height, max_length=max_length, config=config, fonts=fonts)
        self.transform = transform
        self.length = int(length)
        self.seed = int(seed)
        self.source = f"synth:{self.seed}"
        self._streams = SampleStreams(self.seed)  # sample_rng(seed, i), re-keyed per sample

    @property
    def charset(self) -> str:
        return self.renderer.charset

    def __len__(self) -> int:
        return self.length

    def render(self, index: int, max_length: int | None = None) -> tuple[Image.Image, str]:
        """-> (RGB PIL image at the render height and natural width, label) of sample `index`; max_length
        lowers the label-length cap for this sample (a short-words-first curriculum)."""
        return self.renderer.render(sample_rng(self.seed, int(index)), max_length)

    def name(self, index: int) -> str:
        return f"{self.source}:{int(index)}"

    def __repr__(self) -> str:
        r = self.renderer
        return (f"SyntheticDataset(seed={self.seed}, length={self.length}, height={r.height}, "
                f"charset of {len(r.charset)}, {len(r.fonts)} fonts)")

    def __getitem__(self, index: int):
        return self.get_capped(index)

    def get_capped(self, index: int, max_length: int | None = None):
        """dataset[index], with an optional lower label-length cap (see render)."""
        pixels, label = self.renderer.render_array(self._streams(int(index)), max_length)
        t = self.transform
        if stretches_only(t):
            image = torch.from_numpy(to_array(stretch(pixels, t.height, t.width), t.mean, t.std))
        else:
            image = Image.fromarray(pixels, "RGB")
            if t is not None:
                image = t(image)
        return image, label, self.name(index)
