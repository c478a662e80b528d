"""Every knob of the synthetic renderer in one dataclass tree, with defaults tuned to look like cropped photos.

The defaults are the appearance measured best by benchmarks/synth_realism.py. The issue-20 effects (circles,
neon glow, emboss, cast shadows, photographs, display faces, stronger geometry and low resolution) are all
here but mostly off or mild by default: the `irregular` preset (configs/synth/irregular.yaml) turns them on;
it trained a small model worse at the realism check's budget (README), so it is opt-in.

Each appearance effect is an `Effect(p, strength)`: applied to a sample with probability `p`, at a magnitude
scaled by `strength` (what strength means is written next to each effect). Configs can be given as a
SynthConfig, a nested dict, a YAML/JSON file, or `key=value` overrides (`effects.blur.p=0.5`); unknown keys are
errors, so a typo never silently does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from masterocr.config import shipped_names


# Debian display-face packages added for issue 20 (their folders under /usr/share/fonts): weight 0 by default.
IRREGULAR_FONT_GROUPS = (
    "bebas-neue", "league-spartan", "lobster", "lobstertwo", "dancingscript", "kaushanscript", "leckerli-one",
    "kristi", "comfortaa", "quicksand", "cabinsketch", "okolaks", "radisnoir", "yanone-kaffeesatz", "comic-neue",
    "tomsontalks", "staypuft", "engadget", "dustin", "blankenburg", "f500", "ocr-a", "sixtyfour")


@dataclass
class Effect:
    """Apply with probability `p`; `strength` scales the magnitude (see each field of Effects)."""

    p: float = 0.0
    strength: float = 1.0


@dataclass
class TextConfig:
    # Relative sampling weights of the text sources (normalised over the sources usable with the charset):
    # words: dictionary words; pseudo: pronounceable made-up words; random: any charset characters;
    # numbers, dates, prices, codes (serials, plates, room numbers); corpus: chunks of lines of corpus_files.
    weights: dict[str, float] = field(default_factory=lambda: {
        "words": 0.56, "pseudo": 0.06, "random": 0.07, "numbers": 0.09, "dates": 0.04, "prices": 0.05,
        "codes": 0.13, "corpus": 1.0})
    # Case of words as signs write them: relative weights of lower / UPPER / Title / mIxEd.
    case_weights: dict[str, float] = field(default_factory=lambda: {
        "lower": 0.34, "upper": 0.40, "title": 0.23, "mixed": 0.03})
    # Word lists (one word per line). Empty: every default list found (/usr/share/dict/words, ...).
    wordlists: list[str] = field(default_factory=list)
    # Any UTF-8 text files; lines are cut into chunks over the charset (the way to feed CJK or domain text).
    # The "corpus" weight only counts when this list is non-empty.
    corpus_files: list[str] = field(default_factory=list)
    # Length limits of random strings (the dataset's max_length caps every source).
    random_min_length: int = 1
    random_max_length: int = 10
    # Probability that a word gets a punctuation mark glued to it (when the charset has one): "SALE!", "(24)".
    punctuation_p: float = 0.08
    # Dictionary words longer than this are kept with probability exp(-(length - this) / 4): sign words are
    # short, dictionaries are full of long rare ones. 0 disables.
    long_word_length: int = 8


@dataclass
class FontConfig:
    # Font files or directories searched recursively (.ttf, .otf, .ttc). Empty: the system font directories.
    dirs: list[str] = field(default_factory=list)
    # A font is kept when it renders at least this fraction of the characters to render (text is then always
    # drawn with a font that renders every one of its characters).
    min_coverage: float = 0.3
    # Sampling weight of a collection (the font's folder below fonts/truetype, fonts/opentype, ..., e.g.
    # "aenigma", "dejavu"); default 1. A collection's weight is shared by its fonts, so 400 display faces
    # do not drown 20 text faces. Faces rare on signs (blackletter, 8-bit, OCR, racing) weigh less.
    # The display-face packages added for issue 20 weigh 0 by default (the `irregular` preset turns them on).
    group_weights: dict[str, float] = field(default_factory=lambda: {
        "aenigma": 0.8, **{group: 0.0 for group in IRREGULAR_FONT_GROUPS}})
    # Weight multipliers by file name (regular expression, case-insensitive -> factor; every match applies):
    # signs are mostly upright and heavy; hairline faces vanish under blur at 32 pixels.
    name_weights: dict[str, float] = field(default_factory=lambda: {
        "italic|oblique|slanted": 0.4, "thin|hairline|light": 0.3, "bold|black|heavy|extrabold": 1.6})
    # Fonts never used: file names containing any of these (case-insensitive). The defaults are decorative
    # faces of fonts-aenigma that pass the automatic check but whose letters hide in swirls, skulls or blocks.
    exclude: list[str] = field(default_factory=lambda: [
        "loopy.", "skullcap.", "tetri.", "claw1.", "claw2.", "blox2.", "lynx."])


@dataclass
class BackgroundConfig:
    # Relative weights of the background kinds (solid, gradient, procedural texture, photographed texture,
    # photograph); "image" and "photo" count only when their files are found.
    weights: dict[str, float] = field(default_factory=lambda: {
        "solid": 0.3, "gradient": 0.25, "texture": 0.3, "image": 0.15, "photo": 0.0})
    # Folders of photographed textures (crops of them, often recoloured, become backgrounds). Empty: defaults
    # that exist on this machine (the mypaint paper/canvas textures).
    image_dirs: list[str] = field(default_factory=list)
    # Folders of photographs of scenes (crops of them, in their own colours, become backgrounds). Empty:
    # defaults that exist on this machine (the KDE Plasma wallpapers that are photographs: their JPEGs). A folder
    # of one picture at several sizes (1920x1080.jpg, ...) gives one, the size closest to 1280 wide.
    photo_dirs: list[str] = field(default_factory=list)
    # Contrast of procedural textures and of natural images behind the text (0: flat, 1: full).
    texture_strength: float = 0.35
    image_strength: float = 0.6
    # Contrast of photographs behind the text (scaled by a uniform draw in [0.5, 1]).
    photo_strength: float = 0.9
    # Number of procedural textures generated once per process (deterministically) to crop from.
    bank_size: int = 24


@dataclass
class ColourConfig:
    # Minimum luminance difference (0..1) between text and background mean colour.
    min_contrast: float = 0.3
    # Probability that a background / text colour is achromatic (black/white/grey), as much of signage is.
    grey_p: float = 0.4
    text_grey_p: float = 0.6
    # Fixed RGB colours (0-255) instead of random ones; null keeps them random. The naive baseline of the
    # realism comparison (configs/synth/naive.yaml) draws black text on white with these.
    text_rgb: Optional[list[float]] = None
    background_rgb: Optional[list[float]] = None


@dataclass
class CropConfig:
    # Padding around the tight text box, in units of the text height: uniform in [lo, hi] per side.
    # Slightly negative values cut into the ink, as a detector's box sometimes does.
    pad_top: list[float] = field(default_factory=lambda: [-0.04, 0.28])
    pad_bottom: list[float] = field(default_factory=lambda: [-0.04, 0.28])
    pad_left: list[float] = field(default_factory=lambda: [-0.02, 0.35])
    pad_right: list[float] = field(default_factory=lambda: [-0.02, 0.35])
    # Font size in pixels relative to the output height. Glyphs are drawn once per font at this size and
    # cached; the warp then scales them into the crop, so size variety comes from padding and rotation.
    font_size: float = 1.1
    # Widest crop, as a multiple of the output height (very long strings are squeezed to fit).
    max_aspect: float = 16.0
    # The smallest height a low_resolution word is rendered at, in pixels.
    min_height: int = 6


@dataclass
class Effects:
    # Extra letter spacing: tracking uniform in [-0.25, 1] * strength * font size, plus per-gap jitter.
    kerning: Effect = field(default_factory=lambda: Effect(0.5, 0.18))
    # Per-glyph size and baseline wobble, as a fraction of the font size (hand-painted and stencil signs).
    size_jitter: Effect = field(default_factory=lambda: Effect(0.05, 0.06))
    # Outline around the glyphs of width up to strength * font size; a third of outlined words are hollow
    # (the outline alone, the letters' inside showing the background).
    outline: Effect = field(default_factory=lambda: Effect(0.12, 0.08))
    # Drop shadow offset up to strength * font size, softly blurred.
    shadow: Effect = field(default_factory=lambda: Effect(0.15, 0.1))
    # Neon: a bright text colour with a blurred halo of it, up to strength * text height wide, on a darkened
    # background.
    glow: Effect = field(default_factory=lambda: Effect(0.0, 0.25))
    # Embossed or engraved letters: the text in the material's own colour, seen only by a highlight on one
    # edge and a shade on the other, strength * 1 pixel (at a 32-pixel height) apart.
    emboss: Effect = field(default_factory=lambda: Effect(0.0, 1.0))
    # A frame around the text (sign or label edge) at a margin up to strength * text height.
    border: Effect = field(default_factory=lambda: Effect(0.08, 0.5))
    # Letters stacked top to bottom, each upright (vertical signs); strength: extra gap jitter as a fraction
    # of the font size. Off by default; `orientation` and the training pipeline's rotation turn whole words.
    vertical: Effect = field(default_factory=lambda: Effect(0.0, 0.15))
    # Small rotation uniform in +-strength degrees (real crops are never quite level).
    rotation: Effect = field(default_factory=lambda: Effect(0.5, 6.0))
    # The whole word turned by 90, 180 or 270 degrees (equally often) at rate p, label unchanged; strength
    # is unused (0 switches it off). Off by default: training recipes rotate in the pipeline instead
    # (data.rotate90), which also turns real crops.
    orientation: Effect = field(default_factory=lambda: Effect(0.0, 1.0))
    # Horizontal shear factor uniform in +-strength.
    shear: Effect = field(default_factory=lambda: Effect(0.3, 0.3))
    # Perspective: each side's scale changes by up to +-strength (projective warp), horizontally and
    # vertically.
    perspective: Effect = field(default_factory=lambda: Effect(0.4, 0.25))
    # Text along a circular path, letters turned to follow it, arched or sagging (both directions): an arc
    # spanning up to strength * 150 degrees (at most 25 per glyph), or for a third of curved words of 5+
    # glyphs most of a circle (180-320 degrees * strength, a stamp or a round logo). Words of 4+ glyphs.
    curve: Effect = field(default_factory=lambda: Effect(0.06, 1.0))
    # Text colour gradient (two close colours across the word); strength: how far apart they are.
    text_gradient: Effect = field(default_factory=lambda: Effect(0.12, 0.5))
    # 1-2 occluding lines (wires, poles, frame edges) up to strength * height thick.
    occlusion: Effect = field(default_factory=lambda: Effect(0.06, 0.12))
    # Lighting: a brightness gradient or glare, of relative amplitude up to strength.
    lighting: Effect = field(default_factory=lambda: Effect(0.4, 0.5))
    # A cast shadow (awning, pole, a neighbouring sign): one side of a soft straight edge across the crop is
    # darkened by up to strength.
    cast_shadow: Effect = field(default_factory=lambda: Effect(0.0, 0.6))
    # Contrast loss (haze, faded paint): blend towards the mean by up to strength.
    contrast: Effect = field(default_factory=lambda: Effect(0.2, 0.35))
    # Colour cast / white balance: per-channel gains of +-strength.
    colour_cast: Effect = field(default_factory=lambda: Effect(0.3, 0.12))
    # Gaussian blur of radius up to strength * height / 32 pixels.
    blur: Effect = field(default_factory=lambda: Effect(0.3, 1.1))
    # Motion blur: a streak along a line (mostly near horizontal, any angle), up to strength * height / 32
    # pixels long.
    motion_blur: Effect = field(default_factory=lambda: Effect(0.06, 2.5))
    # Very low resolution: the word is rendered at (1 - u * strength) of the output height, u uniform in
    # [0, 1], never under crop.min_height pixels, with its noise and JPEG at that size, then upsampled (as a
    # recognizer enlarges a small crop): 32 * (1 - 0.75) = 8-pixel words at strength 0.75 (`irregular`).
    low_resolution: Effect = field(default_factory=lambda: Effect(0.25, 0.55))
    # Gaussian sensor noise of standard deviation up to strength * 255.
    noise: Effect = field(default_factory=lambda: Effect(0.3, 0.05))
    # JPEG re-encoding at quality 95 - u * strength * 90.
    jpeg: Effect = field(default_factory=lambda: Effect(0.3, 0.85))


@dataclass
class SynthConfig:
    # At most this many of the destructive degradations (low_resolution, occlusion, lighting, cast_shadow,
    # contrast, blur, motion_blur, noise) hit one sample, in that order: stacking them all makes words no one
    # can read.
    max_degradations: int = 3
    text: TextConfig = field(default_factory=TextConfig)
    fonts: FontConfig = field(default_factory=FontConfig)
    backgrounds: BackgroundConfig = field(default_factory=BackgroundConfig)
    colours: ColourConfig = field(default_factory=ColourConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    effects: Effects = field(default_factory=Effects)


EFFECT_NAMES = tuple(Effects.__dataclass_fields__)

ConfigSpec = Any  # None | SynthConfig | dict | path | "key=value" | a list of those, applied in order


PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "synth"


def presets() -> list[str]:
    """Named renderer settings shipped in masterocr/configs/synth (e.g. "naive")."""
    return shipped_names(PRESET_DIR, ".yaml")


def build_config(spec: ConfigSpec = None) -> SynthConfig:
    """Defaults, then each override in `spec` in order (dicts, YAML/JSON files, `key=value` strings).

    Raises ValueError naming the offending key or file on unknown keys or wrong types.
    """
    if isinstance(spec, SynthConfig):
        return spec
    base = OmegaConf.structured(SynthConfig)
    if spec is None:
        items = []
    elif isinstance(spec, (list, tuple, ListConfig)):
        items = list(spec)
    else:
        items = [spec]
    items = _group_overrides(items)
    for item in items:
        try:
            if isinstance(item, SynthConfig):
                update = OmegaConf.structured(item)
            elif isinstance(item, DictConfig):  # a `config:` section of a YAML training recipe
                update = item
            elif isinstance(item, dict):
                update = OmegaConf.create(item)
            elif isinstance(item, (str, os.PathLike)) and os.path.isfile(item):
                update = OmegaConf.load(item)
            elif isinstance(item, str) and item in presets():
                update = OmegaConf.load(PRESET_DIR / f"{item}.yaml")
            elif isinstance(item, str) and "=" in item:
                update = OmegaConf.from_dotlist([item])
            elif isinstance(item, _Overrides):
                try:
                    base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(item)))
                except OmegaConfBaseException:  # merge one by one, so the message names the culprit
                    for one in item:
                        try:
                            base = OmegaConf.merge(base, OmegaConf.from_dotlist([one]))
                        except OmegaConfBaseException as e:
                            raise ValueError(f"synth config {one!r}: {e}".split("\n")[0]) from None
                    raise
                continue
            else:
                raise ValueError(f"synth config {item!r}: not a file, a preset ({', '.join(presets())}), "
                                 "a dict or a key=value override")
            base = OmegaConf.merge(base, update)
        except OmegaConfBaseException as e:
            raise ValueError(f"synth config {item!r}: {e}".split("\n")[0]) from None
    cfg = OmegaConf.to_object(base)
    _validate(cfg)
    return cfg  # type: ignore[return-value]


class _Overrides(tuple):
    """Consecutive `key=value` strings, merged at once (one merge per string costs a deep copy each)."""


def _group_overrides(items: list) -> list:
    out: list = []
    for item in items:
        dotted = isinstance(item, str) and "=" in item and not os.path.isfile(item) and item not in presets()
        if dotted and out and isinstance(out[-1], _Overrides):
            out[-1] = _Overrides((*out[-1], item))
        elif dotted:
            out.append(_Overrides((item,)))
        else:
            out.append(item)
    return out


def _validate(cfg: SynthConfig) -> None:
    if cfg.max_degradations < 0:
        raise ValueError(f"synth config max_degradations = {cfg.max_degradations}: must be >= 0")
    for name in EFFECT_NAMES:
        effect = getattr(cfg.effects, name)
        if not 0.0 <= effect.p <= 1.0:
            raise ValueError(f"synth config effects.{name}.p = {effect.p}: must be in [0, 1]")
        if effect.strength < 0:
            raise ValueError(f"synth config effects.{name}.strength = {effect.strength}: must be >= 0")
    for section, weights in (("text.weights", cfg.text.weights), ("text.case_weights", cfg.text.case_weights),
                             ("backgrounds.weights", cfg.backgrounds.weights)):
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"synth config {section} = {dict(weights)}: weights must be >= 0, one > 0")
    for name in ("pad_top", "pad_bottom", "pad_left", "pad_right"):
        lo_hi = getattr(cfg.crop, name)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise ValueError(f"synth config crop.{name} = {lo_hi}: expected [lo, hi] with lo <= hi")
    if cfg.crop.min_height < 4:
        raise ValueError(f"synth config crop.min_height = {cfg.crop.min_height}: must be >= 4")
    if not 0.3 <= cfg.crop.font_size <= 4:
        raise ValueError(f"synth config crop.font_size = {cfg.crop.font_size}: must be in [0.3, 4]")
    for name in ("text_rgb", "background_rgb"):
        rgb = getattr(cfg.colours, name)
        if rgb is not None and (len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb)):
            raise ValueError(f"synth config colours.{name} = {rgb}: expected three values in [0, 255] or null")
    if cfg.text.random_min_length < 1 or cfg.text.random_max_length < cfg.text.random_min_length:
        raise ValueError("synth config text.random_min_length/random_max_length: need 1 <= min <= max")


def config_to_dict(cfg: SynthConfig) -> dict:
    """Plain nested dict (for printing or saving next to a baked dataset)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def effect_names() -> Sequence[str]:
    return EFFECT_NAMES
