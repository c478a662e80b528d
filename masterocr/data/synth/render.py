"""The word renderer: text + font -> glyph layout (straight or along an arc) -> outline/shadow/frame layers ->
one projective warp (rotation, shear, perspective, scale) straight into the output crop -> background ->
photographic degradations.

Everything is drawn close to the output size: glyphs come from a cache at a font size near the output height,
and the warp maps them directly into an (height, natural width) crop, so the per-image work is a handful of
small NumPy/OpenCV operations (`imageops`) on uint8 or float32 arrays. All randomness comes from the Generator
handed to `render`.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ...charset import DEFAULT_MAX_LENGTH, load_charset
from . import effects as fx
from . import imageops as ops
from .config import ConfigSpec, SynthConfig, build_config
from .fonts import FontSet
from .text import TextSampler, renderable_chars

logger = logging.getLogger(__name__)

FontSpec = FontSet | Sequence[str | os.PathLike] | str | os.PathLike | None


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def _scale(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], np.float64)


def _bounds(m: np.ndarray, pts: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the bounding box of (N, 2) points through a 3x3 homography, computed on Python
    floats (the same values as in NumPy: four points cost more in NumPy calls than in arithmetic)."""
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    xs, ys = [], []
    for x, y in pts.tolist():
        w = g * x + h * y + i
        xs.append((a * x + b * y + c) / w)
        ys.append((d * x + e * y + f) / w)
    return min(xs), min(ys), max(xs), max(ys)


def build_fonts(charset: str | Sequence[str], fonts: FontSpec = None, config: ConfigSpec = None) -> FontSet:
    """The FontSet a Renderer of `charset` uses: fonts under `fonts` (files/folders; default: the config's
    font folders, else the system's) checked against every character text may show, weighted per config.
    Build it once and pass it to several renderers or datasets to share the check and the glyph cache."""
    cfg = build_config(config)
    charset = load_charset(charset)
    if isinstance(fonts, FontSet):
        return fonts
    if isinstance(fonts, (str, os.PathLike)):
        fonts = [fonts]
    paths = list(fonts) if fonts else (list(cfg.fonts.dirs) or None)
    caseless = not any(c.isupper() for c in charset) and any(c.islower() for c in charset)
    return FontSet.build(renderable_chars(charset), paths, cfg.fonts.min_coverage, case_sensitive=not caseless,
                         group_weights=dict(cfg.fonts.group_weights), name_weights=dict(cfg.fonts.name_weights),
                         exclude=list(cfg.fonts.exclude))


class Renderer:
    """Renders (image, label) pairs for a charset. `render(rng)` is a pure function of the Generator state."""

    def __init__(self, charset: str | Sequence[str] = "94", height: int = 32,
                 max_length: int = DEFAULT_MAX_LENGTH, config: ConfigSpec = None, fonts: FontSpec = None):
        self.config: SynthConfig = build_config(config)
        self.charset = load_charset(charset)
        self.height = int(height)
        if self.height < 8:
            raise ValueError(f"height {height}: must be at least 8 pixels")
        self.max_length = int(max_length)
        self.text = TextSampler(self.charset, self.max_length, self.config.text)
        self.fonts = fonts if isinstance(fonts, FontSet) else build_fonts(self.charset, fonts, self.config)
        missing = [c for c in self.charset if c not in self.fonts.coverage and not c.isspace()]
        if missing:
            logger.warning("no usable font draws %d charset characters (e.g. %r): they never appear in "
                           "synthetic labels", len(missing), "".join(missing[:10]))
        self._fallback_chars = [c for c in self.text.render_chars if c in self.fonts.coverage and not c.isspace()]
        if not self._fallback_chars:
            raise ValueError("no usable font draws any character of the charset")
        self.backgrounds = fx.Backgrounds(self.config.backgrounds, self.config.colours)
        ops.single_threaded()  # OpenCV, for the whole process: see there

    @property
    def font_size(self) -> int:
        """Pixel size glyphs are drawn at (then warped into the crop)."""
        return max(8, int(round(self.height * self.config.crop.font_size)))

    def preload_glyphs(self) -> int:
        """Fill the glyph cache for every renderable character (seconds for hundreds of fonts); optional:
        glyphs are otherwise drawn on first use."""
        return self.fonts.preload(self.text.render_chars, self.font_size)

    def warm_up(self) -> None:
        """Fill every cache a long run fills as it goes: glyphs and the background images."""
        self.preload_glyphs()
        self.backgrounds.preload()

    # ---- text and font ------------------------------------------------------------------------------------
    def _text_and_font(self, rng: np.random.Generator, max_length: int | None = None) -> tuple[str, str, int]:
        for _ in range(8):
            text, label = self.text.sample(rng, max_length=max_length)
            font = self.fonts.choose(text, rng)
            if font is not None:
                return text, label, font
        # Nothing drawable came up: a random string over the characters of one font.
        font = self.fonts.sample(rng)
        chars = [c for c in self._fallback_chars if c in self.fonts.fonts[font].coverage]
        n = int(rng.integers(1, min(8, self.text.limit(max_length)) + 1))
        result = self.text.finish("".join(chars[j] for j in rng.integers(len(chars), size=n)), max_length)
        if result is None:  # only possible with a pathological charset; keep it explicit
            raise RuntimeError("cannot draw a renderable label")
        return result[0], result[1], font

    # ---- glyph layout -------------------------------------------------------------------------------------
    def _layout(self, text: str, font: int, size: int, rng: np.random.Generator):
        """-> (placements [(glyph mask uint8 (h, w), x, y, advance)], baseline y): glyph tops are relative to
        the ascender line, with the font's kerning, tracking/gap jitter and optional per-glyph size wobble."""
        eff = self.config.effects
        tracking, gap_jitter, size_jit = 0.0, 0.0, 0.0
        if fx.active(eff.kerning, rng):
            tracking = size * eff.kerning.strength * rng.uniform(-0.25, 1.0)
            gap_jitter = size * eff.kerning.strength * 0.15
        if fx.active(eff.size_jitter, rng):
            size_jit = eff.size_jitter.strength
        ascent = self.fonts.metrics(font, size)[0]
        n = len(text)
        gaps = rng.uniform(-1, 1, n) * gap_jitter if gap_jitter else None
        if size_jit:
            scales = 1 + rng.uniform(-1, 1, n) * size_jit
            dys = rng.uniform(-1, 1, n) * size_jit * size * 0.5
        placed = []
        pen, prev = 0.0, None
        for k, ch in enumerate(text):
            mask, left, top, advance = self.fonts.glyph(font, size, ch)
            if prev is not None:
                pen += self.fonts.kern(font, size, prev, ch) + tracking
                if gaps is not None:
                    pen += gaps[k]
            x, y = pen + left, float(top)
            if size_jit and mask.size:
                # Scale the glyph about its baseline point and wobble it vertically.
                s = scales[k]
                mh, mw = max(1, round(mask.shape[0] * s)), max(1, round(mask.shape[1] * s))
                mask = ops.resize(mask, (mw, mh), "linear")
                y = ascent - (ascent - top) * s + dys[k]
                advance *= s
            if mask.size:
                placed.append((mask, x, y, advance))
            pen += advance
            prev = ch
        return placed, ascent

    def _vertical(self, text: str, font: int, size: int, rng: np.random.Generator):
        """Letters stacked top to bottom, each upright and centred on one column (vertical signs)."""
        gap_jitter = size * self.config.effects.vertical.strength
        gap = size * rng.uniform(0.05, 0.25)
        placed, y = [], 0.0
        for ch in text:
            mask, left, top, advance = self.fonts.glyph(font, size, ch)
            if not mask.size:  # a space: half a line
                y += size * 0.5
                continue
            placed.append((mask, -mask.shape[1] / 2, y, advance))
            y += mask.shape[0] + gap + rng.uniform(-0.5, 1) * gap_jitter
        return placed

    def _curve(self, placed, baseline: float, rng: np.random.Generator):
        """Bend a straight layout along a circle, arched or sagging: an arc of up to 150 degrees, or most of a
        circle. The flat ink is remapped as a whole (one mesh warp), so letters turn and bend with the path
        as printed curved text does. -> one placement holding the curved ink."""
        x_min = min(x for _, x, _, _ in placed)
        x_max = max(x + m.shape[1] for m, x, _, _ in placed)
        span = max(1.0, x_max - x_min)
        strength = self.config.effects.curve.strength
        if len(placed) >= 5 and rng.random() < 1 / 3:  # round logos and stamps: text around a circle
            arc = math.radians(rng.uniform(180.0, 320.0)) * strength
        else:
            arc = math.radians(min(150.0, 25.0 * (len(placed) - 1))) * strength
            arc = arc * rng.uniform(0.3, 1.0)
        arc = min(max(arc, 1e-3), math.radians(330.0))
        sign = 1.0 if rng.random() < 0.6 else -1.0  # 1: text on top of a circle (arched), -1: sagging (smile)

        fx0 = math.floor(x_min)
        fy0 = math.floor(min(y for _, _, y, _ in placed))
        fx1, fy1 = math.ceil(x_max), math.ceil(max(y + m.shape[0] for m, _, y, _ in placed))
        flat = np.zeros((fy1 - fy0, fx1 - fx0), np.uint8)
        for mask, x, y, _ in placed:
            px, py = int(round(x)) - fx0, int(round(y)) - fy0
            region = flat[py:py + mask.shape[0], px:px + mask.shape[1]]
            np.maximum(region, mask[:region.shape[0], :region.shape[1]], out=region)
        # The circle must stay outside the ink: its radius exceeds the ink's depth on the centre's side.
        depth = (baseline - fy0) if sign < 0 else (fy1 - baseline)
        radius = max(span / arc, 1.15 * depth, 1.0)
        mid = x_min + span / 2
        cy = baseline + sign * radius  # the circle's centre is (mid, cy)

        def forward(x, y):  # flat layout -> curved layout
            theta = (x - mid) / radius
            rho = radius + sign * (baseline - y)
            return mid + rho * np.sin(theta), cy - sign * rho * np.cos(theta)

        gy, gx = np.mgrid[fy0:fy1 + 1:4, fx0:fx1 + 1:4].astype(np.float64)
        gx = np.concatenate([gx.ravel(), [fx0, fx1, fx0, fx1]])
        gy = np.concatenate([gy.ravel(), [fy0, fy0, fy1, fy1]])
        u, v = forward(gx, gy)
        ox0, oy0 = math.floor(u.min()) - 1, math.floor(v.min()) - 1
        ow, oh = math.ceil(u.max()) - ox0 + 2, math.ceil(v.max()) - oy0 + 2
        # Inverse map of every output pixel centre into the flat layout (pixel centres at whole numbers), then
        # bilinear sampling, zero outside (the circle's seam behind the text maps past the ends of the ink).
        # float32 throughout (OpenCV's maps): the offsets as Python floats, which NumPy does not promote.
        du = float(ox0 + 0.5 - mid) + np.arange(ow, dtype=np.float32)[None, :]           # (1, ow)
        dv = sign * (float(cy - oy0 - 0.5) - np.arange(oh, dtype=np.float32)[:, None])    # (oh, 1)
        x = np.arctan2(du, dv) * float(radius) + float(mid - fx0 - 0.5)                   # (oh, ow)
        y = float(baseline - fy0 - 0.5 + sign * radius) - sign * np.hypot(du, dv)
        curved = ops.remap(flat, x, y)
        return [(curved, float(ox0), float(oy0), 0.0)]

    # ---- the whole sample ---------------------------------------------------------------------------------
    def render(self, rng: np.random.Generator, max_length: int | None = None) -> tuple[Image.Image, str]:
        """-> (RGB image of height self.height and natural width, label); max_length: a lower label-length cap
        for this sample (short words first), default self.max_length."""
        pixels, label = self.render_array(rng, max_length)
        return Image.fromarray(pixels, "RGB"), label

    def render_array(self, rng: np.random.Generator, max_length: int | None = None) -> tuple[np.ndarray, str]:
        """`render` as a (height, width, 3) uint8 RGB array (the training loader's form: no PIL image)."""
        text, label, font = self._text_and_font(rng, max_length)
        return self._draw(text, font, rng), label

    def render_text(self, text: str, rng: np.random.Generator, font: int | None = None) -> Image.Image:
        """`text` drawn with the sample's appearance drawn from `rng` (font: an index into self.fonts, by
        default one drawn among those that draw all of it). For tests and tools that need a known word."""
        if font is None:
            font = self.fonts.choose(text, rng)
            if font is None:
                raise ValueError(f"no usable font draws all of {text!r}")
        return Image.fromarray(self._draw(text, font, rng), "RGB")

    def _draw(self, text: str, font: int, rng: np.random.Generator) -> np.ndarray:
        cfg, eff, H = self.config, self.config.effects, self.height
        size = self.font_size
        vertical = fx.active(eff.vertical, rng) and len(text) > 1
        if vertical:
            placed, baseline = self._vertical(text, font, size, rng), 0.0
        else:
            placed, baseline = self._layout(text, font, size, rng)
            if fx.active(eff.curve, rng) and len(placed) >= 4:
                placed = self._curve(placed, baseline, rng)
        if not placed:  # only whitespace is drawable (cannot happen: labels are stripped)
            raise RuntimeError(f"text {text!r} has no ink")

        # Decoration sizes decide the canvas margin.
        outline = shadow = border = None
        hollow = False
        if fx.active(eff.outline, rng):
            outline = max(1, int(round(size * eff.outline.strength * rng.uniform(0.3, 1.0))))
            hollow = rng.random() < 1 / 3
        if fx.active(eff.shadow, rng):
            off = size * eff.shadow.strength * rng.uniform(0.3, 1.0)
            angle = rng.uniform(0, 2 * np.pi)
            shadow = (off * math.cos(angle), off * math.sin(angle), rng.uniform(0, 0.1) * size)
        ink_h_est = size * 0.75
        if fx.active(eff.border, rng):
            border = (rng.uniform(0.1, 1.0) * eff.border.strength * ink_h_est,
                      max(1, int(round(rng.uniform(0.03, 0.1) * size))))
        margin = 2 + (outline or 0)
        if shadow:
            margin += int(math.ceil(max(abs(shadow[0]), abs(shadow[1])) + 2 * shadow[2]))
        if border:
            margin = max(margin, int(math.ceil(border[0] + border[1])) + 2)

        x0 = math.floor(min(x for _, x, _, _ in placed))
        y0 = math.floor(min(y for _, _, y, _ in placed))
        x1 = math.ceil(max(x + m.shape[1] for m, x, _, _ in placed))
        y1 = math.ceil(max(y + m.shape[0] for m, _, y, _ in placed))
        cw, ch = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
        alpha = np.zeros((ch, cw), np.uint8)
        for mask, x, y, _ in placed:
            px, py = int(round(x)) - x0 + margin, int(round(y)) - y0 + margin
            region = alpha[py:py + mask.shape[0], px:px + mask.shape[1]]
            np.maximum(region, mask[:region.shape[0], :region.shape[1]], out=region)
        box = np.array([[margin, margin], [cw - margin, margin], [cw - margin, ch - margin],
                        [margin, ch - margin]], np.float64)  # ink box corners on the canvas
        ink_w, ink_h = float(x1 - x0), float(y1 - y0)

        # Geometry: canvas -> warped space (centred on the ink), then crop window -> output pixels.
        g = _translate(-(margin + ink_w / 2), -(margin + ink_h / 2))
        if fx.active(eff.shear, rng):
            g = np.array([[1, rng.uniform(-1, 1) * eff.shear.strength, 0], [0, 1, 0], [0, 0, 1]]) @ g
        if fx.active(eff.perspective, rng):
            s = min(eff.perspective.strength, 0.6)
            # Normalised by the canvas so the projective denominator stays in [1 - s, 1 + s] > 0 on it.
            px = rng.uniform(-1, 1) * s * 2 / cw
            py = rng.uniform(-1, 1) * s * 2 / ch * 0.5
            g = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]]) @ g
        turn = 0.0
        if fx.active(eff.rotation, rng):
            turn = rng.uniform(-1, 1) * eff.rotation.strength
        if fx.active(eff.orientation, rng):
            turn += 90.0 * int(rng.integers(1, 4))  # counter-clockwise, as rotate_image turns a crop
        if turn:
            t = math.radians(-turn)  # y points down: a negative angle turns counter-clockwise on screen
            g = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]]) @ g
        bx0, by0, bx1, by1 = _bounds(g, box)
        # Padding is relative to the letter height, not to a rotated or curved box.
        ref = min(ink_w if vertical else ink_h, by1 - by0, 0.8 * size)
        c = cfg.crop
        wx0 = bx0 - rng.uniform(*c.pad_left) * ref
        wx1 = bx1 + rng.uniform(*c.pad_right) * ref
        wy0 = by0 - rng.uniform(*c.pad_top) * ref
        wy1 = by1 + rng.uniform(*c.pad_bottom) * ref
        short = 0.5 * size - (wy1 - wy0)  # flat marks ("-", "..."): a crop at least half a letter tall
        if short > 0:
            wy0, wy1 = wy0 - short / 2, wy1 + short / 2
        win_w, win_h = max(wx1 - wx0, 2.0), max(wy1 - wy0, 2.0)
        W = int(round(min(max(win_w * H / win_h, 2.0), cfg.crop.max_aspect * H)))

        # Destructive degradations: at most cfg.max_degradations of them. Low resolution comes first: it
        # decides the size everything below is drawn at.
        budget = [cfg.max_degradations]

        def hit(effect) -> bool:
            if not fx.active(effect, rng) or budget[0] <= 0:
                return False
            budget[0] -= 1
            return True

        h, w = H, W  # working size: smaller than the output for a low-resolution word
        if hit(eff.low_resolution):
            scale = 1 - rng.uniform(0, min(eff.low_resolution.strength, 0.95))
            h = min(H, max(cfg.crop.min_height, int(round(H * scale))))
            w = max(2, int(round(W * h / H)))
        sy, sx = h / win_h, w / win_w
        f = _scale(sx, sy) @ _translate(-wx0, -wy0) @ g

        # Masks on the canvas: text, and the decorations that must follow the same warp.
        masks = [alpha]
        if outline:
            masks.append(_dilate(alpha, outline))
        if shadow:
            dx, dy, blur = shadow
            sh = ops.warp(alpha, _translate(dx, dy), (cw, ch))
            masks.append(ops.gaussian_blur(sh, blur) if blur > 0.3 else sh)
        if border:
            pad, width = border
            frame = Image.new("L", (cw, ch), 0)
            (fx0, fy0), (fx1, fy1) = box[0], box[2]
            ImageDraw.Draw(frame).rectangle((fx0 - pad, fy0 - pad, fx1 + pad, fy1 + pad), outline=255, width=width)
            masks.append(np.asarray(frame))
        # One warp for all masks, packed as the channels of one image.
        canvas = alpha if len(masks) == 1 else np.dstack(masks)
        scale = min(sx, sy)
        k = int(1 / scale) if scale < 0.55 else 1  # shrink big canvases first (k x k means): no aliasing
        if k > 1:
            blocks = ((0, -ch % k), (0, -cw % k)) + ((0, 0),) * (canvas.ndim - 2)  # whole k x k blocks
            canvas = np.pad(canvas, blocks)
            canvas = ops.resize(canvas, (canvas.shape[1] // k, canvas.shape[0] // k), "area")
            f = f @ _scale(k, k)
        warped = ops.warp(canvas, f, (w, h))
        if warped.ndim == 2:
            warped = warped[:, :, None]

        # Colours: background first, then text contrasting with it; layers composited back to front.
        cc = cfg.colours
        img, bg_mean = self.backgrounds.sample(rng, h, w)
        fg = fx.contrasting_colour(rng, fx.luminance(bg_mean), cc.min_contrast, cc.text_grey_p)
        if cc.text_rgb is not None:
            fg = np.asarray(cc.text_rgb, np.float32)
        glow = fx.active(eff.glow, rng)
        emboss = not glow and fx.active(eff.emboss, rng)
        if glow:  # neon: a saturated light colour on a darkened scene
            fg = fx.neon_colour(rng)
            img *= np.float32(rng.uniform(0.15, 0.5))
        if emboss:  # the letters in the material's own colour, nearly
            fg = fx.shifted_colour(rng, bg_mean, 0.08)
        fg_lum = fx.luminance(fg)
        band = 1
        bands = {}
        for name, on in (("outline", outline), ("shadow", shadow), ("border", border)):
            if on:
                bands[name] = band
                band += 1
        if shadow:
            shade = fx.contrasting_colour(rng, fg_lum, 0.3, 0.8) * 0.5
            _over(img, warped[:, :, bands["shadow"]], shade, rng.uniform(0.4, 0.9))
        if border:
            _over(img, warped[:, :, bands["border"]], fg if rng.random() < 0.7 else fx.random_colour(rng, cc.grey_p))
        text_mask = warped[:, :, 0]
        if glow:
            radius = max(0.8, eff.glow.strength * h * rng.uniform(0.3, 1.0))
            halo = ops.gaussian_blur(text_mask, radius).astype(np.float32)
            _over(img, np.minimum(halo * np.float32(rng.uniform(1.5, 3.0)), 255), fg, rng.uniform(0.6, 0.9))
            fg = fg + (255 - fg) * np.float32(rng.uniform(0.3, 0.7))  # the tube's core is nearly white
        if outline:
            ring = warped[:, :, bands["outline"]]
            if hollow:  # the outline alone: the letters' inside is cut out of it
                ring = np.where(ring > text_mask, ring - text_mask, 0).astype(np.uint8)
            _over(img, ring, fx.contrasting_colour(rng, fx.luminance(bg_mean) if hollow else fg_lum, 0.35,
                                                    cc.grey_p))
        if emboss:
            _over(img, text_mask, fg, rng.uniform(0.3, 0.8))
            _emboss(img, text_mask, rng, eff.emboss.strength * h / 32)
        elif not hollow:
            colour = fg
            if fx.active(eff.text_gradient, rng):
                fg2 = fx.shifted_colour(rng, fg, 0.4 * eff.text_gradient.strength)
                if rng.random() < 0.6:
                    t = fx.ramp(0, 1, h)[:, None, None]
                else:
                    t = fx.ramp(0, 1, w)[None, :, None]
                colour = fg + t * (fg2 - fg)
            _over(img, text_mask, colour)

        # Photographic degradations.
        if hit(eff.occlusion):
            img = fx.draw_occlusion(img, rng, eff.occlusion.strength, cc.grey_p)
        if hit(eff.lighting):
            img = fx.apply_lighting(img, rng, eff.lighting.strength)
        if hit(eff.cast_shadow):
            img = fx.apply_cast_shadow(img, rng, eff.cast_shadow.strength)
        if hit(eff.contrast):
            img = fx.apply_contrast(img, rng, eff.contrast.strength)
        out = ops.to_uint8(img)
        if fx.active(eff.colour_cast, rng):
            out = fx.apply_colour_cast(out, rng, eff.colour_cast.strength)
        if hit(eff.blur):
            out = fx.apply_blur(out, rng, eff.blur.strength, h)
        if hit(eff.motion_blur):
            out = fx.apply_motion_blur(out, rng, eff.motion_blur.strength, h)
        if hit(eff.noise):
            out = fx.apply_noise(out, rng, eff.noise.strength)
        if fx.active(eff.jpeg, rng):
            out = fx.apply_jpeg(out, rng, eff.jpeg.strength)
        return fx.upsample(out, rng, (W, H))


def _emboss(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, depth: float) -> None:
    """In place: relief lighting of the letters' edges, light from a random side: a highlight where the
    mask rises towards the light, a shade where it falls (engraved when the light is swapped)."""
    d = max(1, int(round(depth * rng.uniform(0.7, 1.3))))
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = int(round(d * math.cos(angle))), int(round(d * math.sin(angle)))
    a = mask.astype(np.float32) * np.float32(1 / 255)
    pad = np.pad(a, d)
    h, w = a.shape
    shifted = pad[d + dy:d + dy + h, d + dx:d + dx + w]
    light = np.clip(a - shifted, 0, 1)  # edges facing the light
    shade = np.clip(shifted - a, 0, 1)
    amount = np.float32(rng.uniform(0.4, 0.8))
    img += fx.per_pixel(light * amount) * (255 - img)
    img -= fx.per_pixel(shade * amount) * img


def _over(img: np.ndarray, mask: np.ndarray, colour, opacity: float = 1.0) -> None:
    """In place: img = img * (1 - a) + colour * a, with a = mask / 255 * opacity."""
    a = fx.per_pixel(mask.astype(np.float32) * (opacity / 255.0))
    if np.ndim(colour) == 1:  # one colour (else a gradient, already an image-like operand)
        colour = fx.per_column(colour, img.shape[1])
    img += a * (colour - img)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation by a (2r+1) square, separably (2r maxima per pixel instead of (2r+1)^2)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for d in range(1, radius + 1):
            if axis == 0:
                np.maximum(out[d:], src[:-d], out=out[d:])
                np.maximum(out[:-d], src[d:], out=out[:-d])
            else:
                np.maximum(out[:, d:], src[:, :-d], out=out[:, d:])
                np.maximum(out[:, :-d], src[:, d:], out=out[:, :-d])
    return out


class SampleStreams:
    """sample_rng(seed, index) for many indices in one process, faster: one Generator whose Philox is re-keyed
    for each index (a tenth of the cost of building one). The same streams; each call invalidates the
    Generator the previous call returned, so use one instance per thread."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._bits = np.random.Philox(key=0)
        self._rng = np.random.Generator(self._bits)
        self._state = self._bits.state  # reused: only the key changes, and the counter and buffer restart

    def __call__(self, index: int) -> np.random.Generator:
        if index < 0:
            raise IndexError(f"sample index {index}: must be >= 0")
        state = self._state
        state["state"]["key"] = np.array([index & 0xFFFFFFFFFFFFFFFF, self.seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
        state["state"]["counter"] = np.zeros(4, np.uint64)
        state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
        self._bits.state = state
        return self._rng


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The Generator of sample `index` under `seed`: a pure function of both (any process, any order).

    Philox is a counter-based generator: (seed, index) is its 128-bit key, so every sample has its own
    independent stream and building it costs no seeding hash.
    """
    if index < 0:
        raise IndexError(f"sample index {index}: must be >= 0")
    key = ((int(seed) & 0xFFFFFFFFFFFFFFFF) << 64) | (int(index) & 0xFFFFFFFFFFFFFFFF)
    return np.random.Generator(np.random.Philox(key=key))
