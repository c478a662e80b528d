"""Training augmentations with Pillow and NumPy: a RandAugment-style mix at the strength PARSeq trains with,
plus the geometry and degradations of ABINet/MASTER-style pipelines (perspective, motion blur, noise, JPEG).

`Augment` is a PIL -> PIL callable for `ImageTransform(augment=...)`. Every op has a probability and a
magnitude: the magnitude is the op's strongest setting in its own unit (degrees, shear factor, fraction of the
size, blur radius in pixels at a 32-pixel text height, noise std in 0..255, ...); an applied op draws its
strength uniformly in [0, magnitude] (with a random sign for signed ops). With `num_ops > 0` each image gets
`num_ops` distinct ops drawn at random, each then applied with its probability (RandAugment, as PARSeq);
with `num_ops = 0` every op is tried in order with its own probability.

`rotate90` (a rate) turns that share of the images by 90, 180 or 270 degrees (equally often), after the ops:
rotated and upside-down crops, labels unchanged, so a model learns to read them.

Randomness comes from the `random` module, which torch reseeds in every DataLoader worker, so workers never
repeat each other. `seed=` gives an instance its own generator (tests, previews).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from masterocr.data.image import rotate_image

# Blur sizes are given for a text line this many pixels high and scaled to the image's real height.
REFERENCE_HEIGHT = 32


@dataclass
class OpSpec:
    """Probability of applying an op and its largest strength."""

    prob: float
    magnitude: float


# ---- helpers --------------------------------------------------------------------------------------------

def _fill(img: Image.Image) -> int | tuple[int, ...]:
    """Mean colour of the image border: fills the corners uncovered by geometric ops without black wedges."""
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0).reshape(-1, *arr.shape[2:])
    mean = border.mean(axis=0)
    return int(round(float(mean))) if np.ndim(mean) == 0 else tuple(int(round(float(v))) for v in mean)


def _scale(img: Image.Image) -> float:
    return img.height / REFERENCE_HEIGHT


# ---- geometric ops (strength is signed) -----------------------------------------------------------------

def rotate(img: Image.Image, degrees: float, rng: random.Random) -> Image.Image:
    """Rotate about the centre, expanding the canvas so no character is cut off."""
    return img.rotate(degrees, resample=Image.BILINEAR, expand=True, fillcolor=_fill(img))


def shear_x(img: Image.Image, factor: float, rng: random.Random) -> Image.Image:
    """Horizontal shear (italic-like slant); the canvas widens by |factor| * height to keep all the text."""
    w, h = img.size
    extra = abs(factor) * h
    offset = -factor * h if factor > 0 else 0.0
    # Output (x, y) samples input (x + factor * y + offset, y).
    return img.transform((max(1, round(w + extra)), h), Image.AFFINE, (1, factor, offset, 0, 1, 0),
                         resample=Image.BILINEAR, fillcolor=_fill(img))


def shear_y(img: Image.Image, factor: float, rng: random.Random) -> Image.Image:
    """Vertical shear (a baseline that climbs); the canvas grows by |factor| * width."""
    w, h = img.size
    extra = abs(factor) * w
    offset = -factor * w if factor > 0 else 0.0
    return img.transform((w, max(1, round(h + extra))), Image.AFFINE, (1, 0, 0, factor, 1, offset),
                         resample=Image.BILINEAR, fillcolor=_fill(img))


def translate_x(img: Image.Image, fraction: float, rng: random.Random) -> Image.Image:
    w, h = img.size
    return img.transform(img.size, Image.AFFINE, (1, 0, fraction * w, 0, 1, 0),
                         resample=Image.BILINEAR, fillcolor=_fill(img))


def translate_y(img: Image.Image, fraction: float, rng: random.Random) -> Image.Image:
    w, h = img.size
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, fraction * h),
                         resample=Image.BILINEAR, fillcolor=_fill(img))


def _perspective_coefficients(out_pts: np.ndarray, in_pts: np.ndarray) -> np.ndarray:
    """The 8 coefficients PIL's PERSPECTIVE transform needs to map out_pts (4, 2) onto in_pts (4, 2)."""
    rows = []
    for (x, y), (u, v) in zip(out_pts, in_pts):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), in_pts.reshape(8).astype(np.float64))


def perspective(img: Image.Image, fraction: float, rng: random.Random) -> Image.Image:
    """Move each corner inwards by up to |fraction| of the width/height: text seen from an angle."""
    w, h = img.size
    fraction = abs(fraction)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    jitter = np.array([[rng.uniform(0, fraction) * w, rng.uniform(0, fraction) * h] for _ in range(4)])
    warped = corners + inward * jitter
    warped -= warped.min(axis=0)  # the warped quad, moved to the origin of the output canvas
    size = np.maximum(np.ceil(warped.max(axis=0)), 1).astype(int)
    try:
        coeffs = _perspective_coefficients(warped, corners)
    except np.linalg.LinAlgError:
        return img
    return img.transform((int(size[0]), int(size[1])), Image.PERSPECTIVE, tuple(coeffs),
                         resample=Image.BILINEAR, fillcolor=_fill(img))


# ---- blur and noise (strength >= 0) ---------------------------------------------------------------------

def gaussian_blur(img: Image.Image, radius: float, rng: random.Random) -> Image.Image:
    radius *= _scale(img)
    return img.filter(ImageFilter.GaussianBlur(radius)) if radius >= 0.3 else img


def motion_blur(img: Image.Image, length: float, rng: random.Random) -> Image.Image:
    """Average of the image shifted along a random direction: a camera or object in motion."""
    steps = int(round(length * _scale(img)))
    if steps < 2:
        return img
    angle = rng.uniform(0, np.pi)
    t = np.linspace(-(steps - 1) / 2, (steps - 1) / 2, steps)
    dx, dy = np.round(t * np.cos(angle)).astype(int), np.round(t * np.sin(angle)).astype(int)
    arr = np.asarray(img, dtype=np.float32)
    pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
    widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (arr.ndim - 2)
    padded = np.pad(arr, widths, mode="edge")
    h, w = arr.shape[:2]
    total = np.zeros_like(arr)
    for ox, oy in zip(dx, dy):
        total += padded[pad + oy: pad + oy + h, pad + ox: pad + ox + w]
    return Image.fromarray(np.clip(total / steps + 0.5, 0, 255).astype(np.uint8))


def gaussian_noise(img: Image.Image, std: float, rng: random.Random) -> Image.Image:
    """Additive Gaussian noise, `std` in 0..255 grey levels."""
    if std <= 0:
        return img
    noise_rng = np.random.default_rng(rng.getrandbits(63))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + noise_rng.normal(0.0, std, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, strength: float, rng: random.Random) -> Image.Image:
    """Re-encode as JPEG at quality 95 - strength (compression artefacts of web and phone images)."""
    quality = int(max(5, min(95, round(95 - strength))))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out.convert(img.mode) if out.mode != img.mode else out


# ---- colour ops -----------------------------------------------------------------------------------------

def _enhancer(kind: type) -> Callable[[Image.Image, float, random.Random], Image.Image]:
    def op(img: Image.Image, amount: float, rng: random.Random) -> Image.Image:
        return kind(img).enhance(max(0.0, 1.0 + amount))
    op.__name__ = kind.__name__.lower()
    op.__doc__ = f"ImageEnhance.{kind.__name__} with factor 1 + amount (amount signed)."
    return op


color = _enhancer(ImageEnhance.Color)
contrast = _enhancer(ImageEnhance.Contrast)
brightness = _enhancer(ImageEnhance.Brightness)


def autocontrast(img: Image.Image, _: float, rng: random.Random) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, _: float, rng: random.Random) -> Image.Image:
    return ImageOps.equalize(img)


def invert(img: Image.Image, _: float, rng: random.Random) -> Image.Image:
    """Light text on dark and dark on light are both common; a recogniser should read either."""
    return ImageOps.invert(img)


def posterize(img: Image.Image, bits_removed: float, rng: random.Random) -> Image.Image:
    bits = int(max(1, min(8, 8 - round(bits_removed))))
    return ImageOps.posterize(img, bits) if bits < 8 else img


def solarize(img: Image.Image, fraction: float, rng: random.Random) -> Image.Image:
    """Invert pixels above a threshold that falls from 256 by `fraction` of the range."""
    threshold = int(round(256 * (1.0 - min(1.0, fraction))))
    return ImageOps.solarize(img, threshold) if threshold < 256 else img


# name -> (function, signed strength, default OpSpec). PARSeq's RandAugment (magnitude 5 of 10) applies
# rotate 15 deg, shear x 0.45 / y 0.1, translate x 0.05 / y 0.15, colour/contrast/brightness +-0.45,
# posterize to 2 bits, solarize at 128, blur radius up to 2 at 32 px, mild Poisson noise; the defaults
# below reach those strengths at the top of their range. Perspective, motion blur and JPEG follow ABINet's
# deterioration and MASTER-style real-photo degradations.
OPS: dict[str, tuple[Callable[[Image.Image, float, random.Random], Image.Image], bool, OpSpec]] = {
    "rotate": (rotate, True, OpSpec(0.5, 15.0)),
    "shear_x": (shear_x, True, OpSpec(0.5, 0.45)),
    "shear_y": (shear_y, True, OpSpec(0.5, 0.1)),
    "translate_x": (translate_x, True, OpSpec(0.5, 0.05)),
    "translate_y": (translate_y, True, OpSpec(0.5, 0.15)),
    "perspective": (perspective, False, OpSpec(0.5, 0.15)),
    "gaussian_blur": (gaussian_blur, False, OpSpec(0.5, 2.0)),
    "motion_blur": (motion_blur, False, OpSpec(0.5, 6.0)),
    "gaussian_noise": (gaussian_noise, False, OpSpec(0.5, 12.0)),
    "jpeg": (jpeg, False, OpSpec(0.5, 75.0)),
    "color": (color, True, OpSpec(0.5, 0.45)),
    "contrast": (contrast, True, OpSpec(0.5, 0.45)),
    "brightness": (brightness, True, OpSpec(0.5, 0.45)),
    "autocontrast": (autocontrast, False, OpSpec(0.5, 0.0)),
    "equalize": (equalize, False, OpSpec(0.5, 0.0)),
    "invert": (invert, False, OpSpec(0.5, 0.0)),
    "posterize": (posterize, False, OpSpec(0.5, 6.0)),
    "solarize": (solarize, False, OpSpec(0.5, 0.5)),
}

# Named starting points; a config may start from one and override single ops.
PRESETS: dict[str, dict] = {
    # RandAugment: 3 of all ops per image, each with probability 0.5 (PARSeq's recipe).
    "parseq": {"num_ops": 3, "ops": {name: spec for name, (_, _, spec) in OPS.items()}},
    # Gentler geometry and degradations only, for fine-tuning on small real sets.
    "light": {"num_ops": 2, "ops": {
        "rotate": OpSpec(0.5, 7.0), "shear_x": OpSpec(0.5, 0.25), "perspective": OpSpec(0.5, 0.08),
        "gaussian_blur": OpSpec(0.5, 1.0), "motion_blur": OpSpec(0.5, 3.0), "gaussian_noise": OpSpec(0.5, 6.0),
        "jpeg": OpSpec(0.5, 50.0), "color": OpSpec(0.5, 0.3), "contrast": OpSpec(0.5, 0.3),
        "brightness": OpSpec(0.5, 0.3)}},
}


class _GlobalRandom:
    """The `random` module's shared generator behind the methods the ops use (torch reseeds it per worker)."""

    def random(self) -> float:
        return random.random()

    def uniform(self, a: float, b: float) -> float:
        return random.uniform(a, b)

    def sample(self, population, k: int) -> list:
        return random.sample(population, k)

    def getrandbits(self, k: int) -> int:
        return random.getrandbits(k)


_GLOBAL_RANDOM = _GlobalRandom()


class Augment:
    """PIL -> PIL training augmentation (see the module docstring for the sampling rule).

    ops: name -> OpSpec (or (prob, magnitude), or {"prob": .., "magnitude": ..}); default: the "parseq" preset.
    max_height: images taller than this are first scaled down (keeping aspect) so the ops stay cheap; they are
    resized to the model's input height afterwards anyway. None disables.
    rotate90: the share of images turned by 90, 180 or 270 degrees (counter-clockwise, equally often) after
    the ops; 0 disables.
    """

    def __init__(self, ops: Mapping[str, OpSpec | tuple | Mapping] | None = None, num_ops: int = 3,
                 max_height: int | None = 96, seed: int | None = None, rotate90: float = 0.0):
        if not 0.0 <= float(rotate90) <= 1.0:
            raise ValueError(f"rotate90 = {rotate90}: must be a rate in [0, 1]")
        self.rotate90 = float(rotate90)
        ops = PRESETS["parseq"]["ops"] if ops is None else ops
        self.ops: dict[str, OpSpec] = {}
        for name, spec in ops.items():
            if name not in OPS:
                raise ValueError(f"unknown augmentation {name!r}; choose from {sorted(OPS)}")
            spec = _as_spec(name, spec)
            if spec.prob > 0:
                self.ops[name] = spec
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        self.num_ops = int(num_ops)
        self.max_height = max_height
        # The `random` module itself when unseeded (looked up per call, so the object stays picklable for
        # spawned DataLoader workers); a private generator when seeded.
        self._own_rng = random.Random(seed) if seed is not None else None

    @property
    def rng(self):
        return self._own_rng if self._own_rng is not None else _GLOBAL_RANDOM

    def __repr__(self) -> str:
        ops = ", ".join(f"{n}(p={s.prob:g}, m={s.magnitude:g})" for n, s in self.ops.items())
        return f"Augment(num_ops={self.num_ops}, max_height={self.max_height}, rotate90={self.rotate90:g}, ops=[{ops}])"

    def apply_op(self, img: Image.Image, name: str, strength: float) -> Image.Image:
        """Apply one op at a given strength (deterministic apart from op-internal draws)."""
        return OPS[name][0](img, strength, self.rng)

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.max_height and img.height > self.max_height:
            width = max(1, round(img.width * self.max_height / img.height))
            img = img.resize((width, self.max_height), Image.BILINEAR)
        rng = self.rng
        names = list(self.ops)
        if self.num_ops:
            names = rng.sample(names, min(self.num_ops, len(names)))
        for name in names:
            spec = self.ops[name]
            if rng.random() >= spec.prob:
                continue
            strength = rng.uniform(0.0, spec.magnitude)
            if OPS[name][1] and rng.random() < 0.5:
                strength = -strength
            img = OPS[name][0](img, strength, rng)
        if self.rotate90 and rng.random() < self.rotate90:
            img = rotate_image(img, 90 * (1 + min(int(rng.random() * 3), 2)))
        return img


def _as_spec(name: str, spec) -> OpSpec:
    if isinstance(spec, OpSpec):
        return spec
    if isinstance(spec, Mapping):
        default = OPS[name][2]
        unknown = set(spec) - {"prob", "magnitude"}
        if unknown:
            raise ValueError(f"augmentation {name!r}: unknown keys {sorted(unknown)} (use prob, magnitude)")
        return OpSpec(float(spec.get("prob", default.prob)), float(spec.get("magnitude", default.magnitude)))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return OpSpec(float(spec[0]), float(spec[1]))
    raise ValueError(f"augmentation {name!r}: expected (prob, magnitude) or a mapping, got {spec!r}")


def build_augment(cfg: str | Mapping | None | bool = "parseq", seed: int | None = None,
                  rotate90: float = 0.0) -> Augment | None:
    """Augment from a config: None/False/"none" -> None (or only the rotation when rotate90 > 0); a preset
    name; or a mapping with optional keys `preset` (default "parseq"), `num_ops`, `max_height`, `rotate90`,
    and `ops` overriding single ops (name: {prob, magnitude}, or name: false to turn it off)."""
    if cfg is None or cfg is False or cfg == "none":
        return Augment({}, num_ops=0, seed=seed, rotate90=rotate90) if rotate90 else None
    if cfg is True:
        cfg = "parseq"
    if isinstance(cfg, str):
        cfg = {"preset": cfg}
    cfg = dict(cfg)
    preset_name = cfg.pop("preset", "parseq")
    if preset_name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    ops = dict(preset["ops"])
    for name, spec in dict(cfg.pop("ops", None) or {}).items():
        if spec is False or spec is None:
            ops.pop(name, None)
        else:
            base = ops.get(name, OPS[name][2] if name in OPS else None)
            if base is not None and isinstance(spec, Mapping):
                spec = {"prob": base.prob, "magnitude": base.magnitude, **spec}
            ops[name] = spec
    num_ops = int(cfg.pop("num_ops", preset["num_ops"]))
    max_height = cfg.pop("max_height", 96)
    rotate90 = float(cfg.pop("rotate90", rotate90))
    if cfg:
        raise ValueError(f"unknown augmentation settings {sorted(cfg)}; "
                         "use preset, num_ops, max_height, rotate90, ops")
    return Augment(ops, num_ops=num_ops, max_height=max_height, seed=seed, rotate90=rotate90)
