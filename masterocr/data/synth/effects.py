"""Backgrounds, colours and photographic degradations for synthetic words.

Procedural textures are generated once per process from a fixed seed (every DataLoader worker builds the same
bank), natural images are loaded lazily and kept downscaled; a sample only crops and recolours them. Every
function takes the sample's numpy Generator and works on small float32 (H, W, 3) arrays in [0, 255], or uint8 ones
where noted; resizing, filtering and JPEG go through `imageops` (OpenCV).
"""

from __future__ import annotations

import colorsys
import functools
import logging
import math
import os
import re
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import imageops as ops
from .config import BackgroundConfig, ColourConfig, Effect
from .sampling import cumulative, pick

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_DIRS = ("/usr/share/mypaint/backgrounds",)  # Debian mypaint-data-extras: paper, canvas, cork
DEFAULT_PHOTO_DIRS = ("/usr/share/wallpapers",)  # Debian plasma-workspace-wallpapers (GPL-2+): photographs
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Photographs come as JPEG; the wallpaper packages' PNGs are rendered artwork, not scenes.
PHOTO_EXTENSIONS = (".jpg", ".jpeg")
BANK_SEED = 20240611  # fixed: textures are part of the engine, not of a dataset's seed
TEXTURE_SHAPE = (160, 640)  # (h, w) of each procedural texture
MAX_IMAGE_SIDE = 640  # natural images are kept at most this large
MAX_IMAGES = 400
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# ---- per-pixel and per-channel operands -------------------------------------------------------------------
# NumPy runs (h, w, 3) arithmetic against an (h, w, 1) mask or a (3,) colour three values at a time (a broadcast
# inner loop), 3-6x slower on these small crops than against an operand laid out like the image. These give the
# same values in that layout, so the arithmetic and its results are unchanged.

def per_pixel(a: np.ndarray) -> np.ndarray:
    """(h, w) -> (h, w, 3): each value repeated for the three channels."""
    out = np.empty(a.shape + (3,), a.dtype)
    out[:, :, 0] = a
    out[:, :, 1] = a
    out[:, :, 2] = a
    return out


def per_column(colour: np.ndarray, w: int) -> np.ndarray:
    """(3,) colour -> (w, 3): one row of it, which broadcasts over an (h, w, 3) image in long runs."""
    colour = np.asarray(colour)
    out = np.empty((w, colour.shape[-1]), colour.dtype)  # np.tile's values, without its Python overhead
    out[...] = colour
    return out


def filled(colour: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w, 3) array of one colour."""
    out = np.empty((h, w, 3), colour.dtype)
    out[...] = per_column(colour, w)
    return out


@functools.lru_cache(maxsize=1024)
def ramp(start: float, stop: float, n: int) -> np.ndarray:
    """np.linspace(start, stop, n) in float32, cached read-only (crops come in few sizes)."""
    out = np.linspace(start, stop, n, dtype=np.float32)
    out.flags.writeable = False
    return out


# ---- colours ----------------------------------------------------------------------------------------------

def luminance(rgb: np.ndarray) -> float:
    """Relative luminance-like brightness of an RGB colour in [0, 255] -> [0, 1] (Rec. 601 weights)."""
    return float(np.dot(_LUMA, rgb)) / 255.0


# Hues of sign paint (red, orange, yellow, green, teal, blue, purple, pink) and how often each is seen.
_HUES = np.array([0.0, 0.07, 0.14, 0.33, 0.48, 0.62, 0.76, 0.9])
_HUE_CUM = cumulative([0.23, 0.12, 0.15, 0.17, 0.07, 0.2, 0.03, 0.03])


def random_colour(rng: np.random.Generator, grey_p: float = 0.45) -> np.ndarray:
    """A colour as signs use them: often achromatic, else a paint hue, mostly saturated."""
    if rng.random() < grey_p:
        v = rng.beta(0.6, 0.6) * 255  # greys pile up near black and white
        tint = rng.normal(0, 6, 3).tolist()
        # np.clip(v + tint, 0, 255) in Python floats: the same float64 values, a fifth of the time.
        return np.array([min(max(v + t, 0.0), 255.0) for t in tint], np.float32)
    h = (_HUES[pick(rng, _HUE_CUM)] + rng.normal(0, 0.03)) % 1.0
    s, v = rng.uniform(0.3, 1.0) ** 0.7, rng.uniform(0.2, 1.0) ** 0.6
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def contrasting_colour(rng: np.random.Generator, against: float, min_contrast: float,
                       grey_p: float = 0.45, tries: int = 8) -> np.ndarray:
    """A random colour whose luminance differs from `against` (0..1) by at least `min_contrast`."""
    for _ in range(tries):
        c = random_colour(rng, grey_p)
        if abs(luminance(c) - against) >= min_contrast:
            return c
    # Fall back to a near-black or near-white of random tint, whichever contrasts more.
    base = 0.0 if against > 0.5 else 255.0
    return np.clip(base + rng.normal(0, 12, 3) * (1 if base == 0 else -1), 0, 255).astype(np.float32)


def neon_colour(rng: np.random.Generator) -> np.ndarray:
    """A neon tube's colour: a saturated, bright hue (any hue: pink and violet are common in neon)."""
    h, sat, v = rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.85, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, sat, v), np.float32) * 255


def shifted_colour(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    """`colour` moved by up to `amount` (0..1 of the range) in a random direction."""
    return np.clip(colour + rng.uniform(-1, 1, 3).astype(np.float32) * amount * 255, 0, 255)


# ---- procedural textures ----------------------------------------------------------------------------------

def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(a.astype(np.float32), "F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BICUBIC), np.float32)


def _fractal_noise(rng: np.random.Generator, shape: tuple[int, int], base: int, octaves: int,
                   persistence: float, stretch: float = 1.0) -> np.ndarray:
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2 ** o
        gh = max(2, int(cells * h / w * stretch) + 2)
        out += amp * _upsample(rng.random((gh, cells + 2)), shape)
        total += amp
        amp *= persistence
    return out / total


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, 1), np.percentile(a, 99)
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def make_texture(kind: str, rng: np.random.Generator, shape: tuple[int, int] = TEXTURE_SHAPE) -> np.ndarray:
    """One grey texture in [0, 1] of `shape`: noise, stone, wood, brushed metal, bricks, tiles, dots, paper,
    stains or hatching."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "noise":
        t = _fractal_noise(rng, shape, int(rng.integers(4, 12)), 5, 0.6)
    elif kind == "stone":
        t = _fractal_noise(rng, shape, int(rng.integers(8, 24)), 5, 0.75)
        t += 0.5 * (rng.random(shape) > 0.985)
    elif kind == "wood":
        warp = _fractal_noise(rng, shape, 6, 3, 0.5, stretch=0.3)
        freq = rng.uniform(0.05, 0.2)
        t = 0.5 + 0.5 * np.sin(yy * freq + warp * rng.uniform(6, 14))
        t = 0.7 * t + 0.3 * _fractal_noise(rng, shape, 40, 2, 0.5, stretch=0.1)
    elif kind == "metal":
        t = _fractal_noise(rng, shape, 80, 3, 0.6, stretch=0.05) * 0.8 + 0.2 * rng.random(shape)
    elif kind in ("bricks", "tiles"):
        bh = int(rng.integers(12, 40))
        bw = bh * (int(rng.integers(2, 4)) if kind == "bricks" else 1)
        row = (yy // bh).astype(np.int64)
        offset = (row % 2) * (bw // 2) if kind == "bricks" else 0
        mortar = ((yy % bh) < 2) | (((xx + offset) % bw) < 2)
        t = 0.8 * _fractal_noise(rng, shape, 30, 3, 0.6) + 0.2
        t = np.where(mortar, t * 0.35, t)
    elif kind == "dots":
        step = int(rng.integers(4, 12))
        r = step * rng.uniform(0.15, 0.4)
        d = np.hypot((xx % step) - step / 2, (yy % step) - step / 2)
        t = np.clip(r + 0.5 - d, 0, 1)
    elif kind == "paper":
        t = 0.6 + 0.4 * _fractal_noise(rng, shape, 30, 4, 0.7)
        img = Image.fromarray((t * 255).astype(np.uint8), "L")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(100, 300))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            a, n = rng.uniform(0, np.pi), rng.uniform(3, 15)
            draw.line((x, y, x + n * np.cos(a), y + n * np.sin(a)), fill=int(rng.integers(90, 200)))
        t = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255
    elif kind == "stains":
        t = _fractal_noise(rng, shape, 3, 4, 0.55)
        t = 1 / (1 + np.exp(-(t - t.mean()) * rng.uniform(10, 30)))
    elif kind == "hatch":
        step, angle = rng.uniform(3, 9), rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / step)
        t = 0.6 * t + 0.4 * _fractal_noise(rng, shape, 10, 3, 0.5)
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return _normalise(t)


TEXTURE_KINDS = ("noise", "stone", "wood", "metal", "bricks", "tiles", "dots", "paper", "stains", "hatch")


@functools.lru_cache(maxsize=4)
def texture_bank(size: int) -> list[tuple[np.ndarray, ...]]:
    """`size` procedural textures ((h, w) uint8, each with its pyramid), the same in every process: a fixed
    seed."""
    rng = np.random.default_rng(BANK_SEED)
    return [pyramid((make_texture(TEXTURE_KINDS[i % len(TEXTURE_KINDS)], rng) * 255).astype(np.uint8))
            for i in range(size)]


def pyramid(img: np.ndarray, smallest: int = 16) -> tuple[np.ndarray, ...]:
    """`img` and its successive halvings (2 x 2 means) down to `smallest` pixels on the short side: a window
    shrunk from the level nearest its size needs no more than bilinear sampling, without aliasing."""
    levels = [img]
    while min(levels[-1].shape[:2]) >= 2 * smallest:
        top = levels[-1]
        levels.append(ops.resize(top, (top.shape[1] // 2, top.shape[0] // 2), "area"))
    return tuple(levels)


@functools.lru_cache(maxsize=1)
def noise_field() -> np.ndarray:
    """A fixed (256, 1024, 3) int8 field of Gaussian noise (sd 32) that samples crop from."""
    rng = np.random.default_rng(BANK_SEED + 1)
    return np.clip(rng.normal(0, 32, (256, 1024, 3)), -127, 127).astype(np.int8)


@functools.lru_cache(maxsize=MAX_IMAGES)
def load_background(path: str) -> tuple[np.ndarray, ...] | None:
    """A natural image, (h, w, 3) uint8 RGB, at most MAX_IMAGE_SIDE on its long side, with its pyramid; None
    (with a warning) if unreadable."""
    try:
        with Image.open(path) as raw:
            raw.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
            img = raw.convert("RGB")
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.BILINEAR)
        return pyramid(np.asarray(img))
    except Exception as e:  # one unreadable background never stops rendering
        logger.warning("background image %s: cannot read (%s); skipped", path, e)
        return None


# ---- backgrounds ------------------------------------------------------------------------------------------

_SIZE_NAME = re.compile(r"^(\d+)x(\d+)\.\w+$")


def _one_size(names: list[str]) -> list[str]:
    """A folder of one picture at several sizes (1280x800.jpg, 1920x1080.jpg, ...: a wallpaper package)
    gives the landscape size closest to 1280 wide; other folders give all their images."""
    sizes = [_SIZE_NAME.match(n) for n in names]
    if len(names) < 2 or not all(sizes):
        return names
    def distance(m):
        w, h = int(m.group(1)), int(m.group(2))
        return (w < h, abs(w - 1280), m.group(0))
    return [min(sizes, key=distance).group(0)]


def find_images(dirs: Sequence[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    extensions = tuple(extensions)
    files = []
    for d in dirs:
        d = os.path.expanduser(os.fspath(d))
        if os.path.isfile(d):
            files.append(d)
            continue
        for root, subdirs, names in os.walk(d, followlinks=True):
            subdirs.sort()
            names = sorted(n for n in names if n.lower().endswith(extensions))
            files.extend(os.path.join(root, n) for n in _one_size(names))
    return sorted(dict.fromkeys(files))[:MAX_IMAGES]


def window(levels: tuple[np.ndarray, ...], x0: float, y0: float, cw: float, ch: float, w: int, h: int
           ) -> np.ndarray:
    """The (cw x ch) window at (x0, y0) of a pyramid's image, resized to (h, w) bilinearly from the level at
    which it shrinks by less than 2 (no aliasing); its corners are rounded to that level's pixels."""
    level = min(len(levels) - 1, max(0, int(math.log2(max(min(cw / w, ch / h), 1.0)))))
    img, k = levels[level], 0.5 ** level
    x0i, y0i = int(x0 * k), int(y0 * k)
    crop = img[y0i:max(y0i + 1, int(round((y0 + ch) * k))), x0i:max(x0i + 1, int(round((x0 + cw) * k)))]
    return ops.resize(crop, (w, h), "linear")


class Backgrounds:
    """Draws a (H, W, 3) float32 background and its mean colour: solid, gradient, texture or natural image."""

    KINDS = ("solid", "gradient", "texture", "image", "photo")

    def __init__(self, config: BackgroundConfig, colours: ColourConfig):
        self.config, self.colours = config, colours
        unknown = set(config.weights) - set(self.KINDS)
        if unknown:
            raise ValueError(f"backgrounds.weights: unknown kind {sorted(unknown)[0]!r}; known: {self.KINDS}")
        dirs = list(config.image_dirs) or [d for d in DEFAULT_IMAGE_DIRS if os.path.isdir(d)]
        self.image_files = find_images(dirs)
        if config.image_dirs and not self.image_files:
            raise ValueError(f"backgrounds.image_dirs {list(config.image_dirs)}: no image found")
        if config.photo_dirs:
            self.photo_files = find_images(config.photo_dirs)
        else:
            self.photo_files = find_images([d for d in DEFAULT_PHOTO_DIRS if os.path.isdir(d)], PHOTO_EXTENSIONS)
        if config.photo_dirs and not self.photo_files:
            raise ValueError(f"backgrounds.photo_dirs {list(config.photo_dirs)}: no image found")
        found = {"image": bool(self.image_files), "photo": bool(self.photo_files)}
        kinds = [k for k in self.KINDS if config.weights.get(k, 0) > 0 and found.get(k, True)]
        if not kinds:
            kinds = ["solid"]
        w = np.array([float(config.weights.get(k, 1.0)) for k in kinds])
        self.kinds, self._kind_cum = kinds, cumulative(w)

    @property
    def bank(self) -> list[tuple[np.ndarray, ...]]:
        return texture_bank(max(1, int(self.config.bank_size)))

    def preload(self) -> int:
        """Load every background image now (each process keeps them, downscaled); returns how many loaded."""
        return sum(load_background(f) is not None for f in self.image_files + self.photo_files)

    def image(self, index: int) -> tuple[np.ndarray, ...] | None:
        return load_background(self.image_files[index])

    def sample(self, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (background (h, w, 3) float32, its mean colour (3,))."""
        kind = self.kinds[pick(rng, self._kind_cum)]
        grey_p = self.colours.grey_p
        if kind == "image":
            patch = self._image_patch(rng, h, w)
            if patch is not None:
                return patch
            kind = "texture"
        elif kind == "photo":
            patch = self._photo_patch(rng, h, w)
            if patch is not None:
                return patch
            kind = "texture"
        c1 = random_colour(rng, grey_p)  # drawn even when fixed: fixing a colour changes nothing else
        if self.colours.background_rgb is not None:
            c1 = np.asarray(self.colours.background_rgb, np.float32)
        if kind == "solid":
            return filled(c1, h, w), c1
        if kind == "gradient":
            c2 = shifted_colour(rng, c1, rng.uniform(0.1, 0.45))
            angle = rng.uniform(0, 2 * np.pi)
            gx = ramp(-0.5, 0.5, w) * math.cos(angle) * (w / max(h, 1)) ** 0.5
            gy = ramp(-0.5, 0.5, h) * math.sin(angle)
            t = per_pixel(np.clip(gy[:, None] + gx[None, :] + 0.5, 0, 1))
            return per_column(c1, w) + t * per_column(c2 - c1, w), (c1 + c2) / 2
        # texture: a zoomed crop of a bank texture mapped between two close colours
        tex = self.bank[int(rng.integers(len(self.bank)))]
        zoom = float(np.exp(rng.uniform(np.log(0.5), np.log(3.0))))
        th, tw = tex[0].shape
        cw, ch = min(tw, max(4, w * zoom)), min(th, max(4, h * zoom))
        x0, y0 = rng.uniform(0, tw - cw), rng.uniform(0, th - ch)
        t = window(tex, x0, y0, cw, ch, w, h).astype(np.float32)
        c2 = shifted_colour(rng, c1, self.config.texture_strength * rng.uniform(0.2, 1.0))
        t = per_pixel(t * np.float32(1 / 255.0))
        return per_column(c1, w) + t * per_column(c2 - c1, w), (c1 + c2) / 2

    def _crop(self, img: tuple[np.ndarray, ...], rng: np.random.Generator, h: int, w: int,
              zoom_range: tuple[float, float]) -> np.ndarray:
        """A random window of the pyramid `img` about zoom x the output size (as large as fits), resized to
        (h, w)."""
        zoom = float(np.exp(rng.uniform(np.log(zoom_range[0]), np.log(zoom_range[1]))))
        ih, iw = img[0].shape[:2]
        ch = min(ih, max(4.0, h * zoom))
        cw = min(iw, max(4.0, ch * w / max(h, 1)))
        x0, y0 = rng.uniform(0, iw - cw), rng.uniform(0, ih - ch)
        return window(img, x0, y0, cw, ch, w, h).astype(np.float32)

    def _photo_patch(self, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A window of a photograph in its own colours (foliage, water, walls, sky), contrast reduced a little
        so the text stays the subject; None if it is unreadable."""
        img = load_background(self.photo_files[int(rng.integers(len(self.photo_files)))])
        if img is None:
            return None
        patch = self._crop(img, rng, h, w, (1.0, 8.0))
        mean = ops.mean_colour(patch)
        strength = self.config.photo_strength * rng.uniform(0.5, 1.0)
        row = per_column(mean, w)
        return row + (patch - row) * np.float32(strength), mean

    def _image_patch(self, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A zoomed crop of a natural image, contrast-reduced, often recoloured; None if it is unreadable."""
        img = self.image(int(rng.integers(len(self.image_files))))
        if img is None:
            return None
        patch = self._crop(img, rng, h, w, (0.7, 4.0))
        mean = ops.mean_colour(patch)
        strength = self.config.image_strength * rng.uniform(0.4, 1.0)
        if rng.random() < 0.6:  # recolour: the material's texture in a paint colour
            colour = random_colour(rng, self.colours.grey_p)
            grey = patch @ _LUMA
            rel = (grey - grey.mean()) * (strength * 1.5)
            return np.clip(per_column(colour, w) + per_pixel(rel), 0, 255), colour
        row = per_column(mean, w)
        return row + (patch - row) * strength, mean


# ---- degradations (float32 (H, W, 3) in [0, 255] unless noted) --------------------------------------------

def apply_lighting(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Uneven light: a linear brightness ramp, or a soft glare spot."""
    h, w = img.shape[:2]
    amp = strength * rng.uniform(0.2, 1.0)
    if rng.random() < 0.6:
        angle = rng.uniform(0, 2 * np.pi)
        gx = ramp(-1, 1, w) * math.cos(angle)  # Python floats keep float32 (NumPy's float64 scalars would not)
        gy = ramp(-1, 1, h) * math.sin(angle)
        gain = 1 + amp * 0.5 * (gy[:, None] + gx[None, :])
        return img * per_pixel(gain)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.3, 1.0) * max(h, w) * 0.5
    k = np.float32(-0.5 / (r * r))  # a Gaussian spot, separable: one exponential per row and per column
    gx = np.exp((np.arange(w, dtype=np.float32) - np.float32(cx)) ** 2 * k)
    gy = np.exp(((np.arange(h, dtype=np.float32) - np.float32(cy)) * np.float32(1.5)) ** 2 * k)
    glare = np.multiply.outer(gy, gx)
    # Screen-like blend, capped so the brightest spot keeps part of its contrast.
    return img + per_pixel(glare * (0.6 * amp)) * (255 - img)


def apply_contrast(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Haze / faded paint: blend towards the mean colour (or a grey veil)."""
    k = rng.uniform(0, min(strength, 0.9))
    veil = ops.mean_colour(img) if rng.random() < 0.6 else np.float32(rng.uniform(100, 230))
    veil = veil * k
    return img * (1 - k) + (per_column(veil, img.shape[1]) if veil.ndim else veil)


_LEVELS = np.arange(256, dtype=np.float32)[None, :]


def apply_colour_cast(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """White balance and gamma on uint8 (H, W, 3): per-channel gains of +-strength, then one gamma, through a
    per-channel look-up table (a power per pixel costs ten times more)."""
    gains = 1 + rng.uniform(-strength, strength, 3).astype(np.float32)
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    lut = (255 * (np.clip(_LEVELS * gains[:, None], 0, 255) / 255) ** gamma + 0.5).astype(np.uint8)  # (3, 256)
    return ops.lookup(img, lut)


def apply_cast_shadow(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A shadow cast across the crop: one side of a soft straight edge (any angle, through a random point)
    darkened by up to `strength`, the edge 0.5-6 pixels wide."""
    h, w = img.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    width = rng.uniform(0.5, 6.0)
    dark = strength * rng.uniform(0.3, 1.0)
    d = ((np.arange(w, dtype=np.float32)[None, :] - cx) * np.float32(math.cos(angle))
         + (np.arange(h, dtype=np.float32)[:, None] - cy) * np.float32(math.sin(angle)))  # (h, w) signed distance
    shade = np.float32(dark) / (1 + np.exp(np.clip(-d / np.float32(width), -30, 30)))
    return img * per_pixel(1 - shade)


def draw_occlusion(img: np.ndarray, rng: np.random.Generator, strength: float, grey_p: float) -> np.ndarray:
    """1-2 straight lines across the crop (wires, poles, frame edges)."""
    h, w = img.shape[:2]
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    colour = random_colour(rng, grey_p)
    for _ in range(int(rng.integers(1, 3))):
        width = max(1, int(round(rng.uniform(0.02, max(strength, 0.02)) * h)))
        if rng.random() < 0.5:  # mostly horizontal or vertical, like real structures
            y0, y1 = rng.uniform(0, h, 2)
            draw.line((0, y0, w, y1), fill=255, width=width)
        else:
            x0, x1 = rng.uniform(0, w, 2)
            draw.line((x0, 0, x1, h), fill=255, width=width)
    a = per_pixel(np.asarray(mask, np.float32) / 255.0)
    return img * (1 - a) + per_column(colour, w) * a


def apply_blur(img: np.ndarray, rng: np.random.Generator, strength: float, height: int) -> np.ndarray:
    """Out of focus, on uint8 (H, W, 3): a Gaussian of up to strength * height / 32 pixels."""
    radius = rng.uniform(0.25, 1.0) * strength * height / 32
    return ops.gaussian_blur(img, radius) if radius > 0.05 else img


def apply_motion_blur(img: np.ndarray, rng: np.random.Generator, strength: float, height: int) -> np.ndarray:
    """A camera or object in motion, on uint8 (H, W, 3): the mean of copies shifted along a line (the line's
    length up to strength * height / 32 pixels; 70% within 15 degrees of horizontal, else any direction)."""
    length = rng.uniform(0.3, 1.0) * strength * height / 32
    angle = rng.uniform(-15, 15) if rng.random() < 0.7 else rng.uniform(-90, 90)
    steps = int(math.ceil(length)) + 1
    if length < 0.7:
        return img
    t = np.linspace(-length / 2, length / 2, steps)
    dx = np.round(t * math.cos(math.radians(angle))).astype(int)
    dy = np.round(t * math.sin(math.radians(angle))).astype(int)
    pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
    kernel = np.zeros((2 * pad + 1, 2 * pad + 1), np.float32)  # one weight per copy, at its shift
    np.add.at(kernel, (pad + dy, pad + dx), np.float32(1 / steps))
    return ops.correlate(img, kernel)


_RESAMPLE = ("linear", "cubic", "nearest")  # how a recognizer might upsample, and how often
_RESAMPLE_CUM = cumulative([0.5, 0.4, 0.1])


def upsample(img: np.ndarray, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A small rendering (uint8 (h, w, 3)) enlarged to `size` (w, h) as a recognizer's resize would: bilinear,
    bicubic or nearest."""
    if img.shape[1::-1] == tuple(size):
        return img
    return ops.resize(img, size, _RESAMPLE[pick(rng, _RESAMPLE_CUM)])


def apply_noise(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Gaussian sensor noise on uint8 (H, W, 3), colour or luminance-only: a random crop of a fixed noise field
    (drawing fresh normals would cost more than all other degradations together)."""
    field = noise_field()
    h, w = img.shape[:2]
    sigma = rng.uniform(0.2, 1.0) * strength * 255
    y0 = int(rng.integers(0, field.shape[0] - min(h, field.shape[0]) + 1))
    x0 = int(rng.integers(0, field.shape[1] - min(w, field.shape[1]) + 1))
    colour = rng.random() < 0.5
    n = field[y0:y0 + h, x0:x0 + w, :3 if colour else 1]
    if n.shape[:2] != (h, w):  # an image larger than the field: tile it
        n = np.tile(n, (-(-h // n.shape[0]), -(-w // n.shape[1]), 1))[:h, :w]
    noise = n * np.float32(sigma / 32.0) if colour else per_pixel(n[:, :, 0] * np.float32(sigma / 32.0))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def jpeg_quality(rng: np.random.Generator, strength: float) -> int:
    return max(5, int(round(95 - rng.uniform(0, 1) * min(strength, 1.0) * 90)))


def apply_jpeg(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A JPEG round trip of uint8 (H, W, 3) RGB at a quality down to 95 - 90 * strength (4:2:0 chroma, as
    cameras and web images store it)."""
    return ops.jpeg(img, jpeg_quality(rng, strength))


def active(effect: Effect, rng: np.random.Generator) -> bool:
    """Whether an effect hits this sample. Always one uniform draw, whatever p is, so changing one effect's p
    leaves the decisions drawn before it unchanged."""
    return rng.random() < effect.p and effect.strength > 0
