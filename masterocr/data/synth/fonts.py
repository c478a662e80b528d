"""Font discovery, the coverage check, and cached glyphs for fast rendering.

A font is used only for text whose every character it really draws: the check renders each character and
rejects blank glyphs, the font's "missing glyph" box, one bitmap shared by many characters (a fallback glyph),
lower case drawn as upper case when the charset tells them apart, and picture (dingbat) fonts whose letters
are not letter-shaped. A font that draws fewer than `min_coverage` of the characters is dropped.

Check results are remembered on disk (~/.cache/masterocr/fonts, or $MASTEROCR_CACHE/fonts) per font file,
modification time and character set: checking ~600 fonts takes seconds once, then milliseconds.

Glyph bitmaps and kerning are cached per (font, size, character): rendering a word is then a few NumPy pastes.
Caches only memoise pure functions, so a sample's pixels never depend on what was rendered before it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFont

from .sampling import cumulative, pick

logger = logging.getLogger(__name__)

DEFAULT_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
                     "/usr/share/texmf/fonts/opentype")  # the last holds fonts-texgyre
FONT_EXTENSIONS = (".ttf", ".otf", ".ttc")
CHECK_SIZE = 24  # pixel size of the coverage check (small: fast, still enough to tell glyphs apart)
# Characters that no font should have: what a font draws for them is its "missing glyph" (.notdef).
_ABSENT = ("\uffff", "\U0010fffd", "\ufdd0")
# A bitmap shared by more than this many characters is a fallback glyph, not a real one.
_MAX_SHARED = 3
_LAYOUT = ImageFont.Layout.BASIC  # no shaping engine: fast and the same everywhere
# Pairs that every kerning table adjusts: a font that moves none of them has no kerning.
_KERN_PROBES = ("AV", "AT", "To", "Ta", "Wa", "Yo", "LT", "P.", "Av", "VA", "ry", "F,", "11")


@dataclass(frozen=True)
class FontInfo:
    path: str
    coverage: frozenset  # characters (of the checked set) the font draws
    group: str  # collection the font belongs to (its folder), for balanced sampling


def find_font_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Font files (.ttf/.otf/.ttc) among `paths`: files as given, directories searched recursively.
    Sorted and de-duplicated (by real path and by file name), so every process sees the same list."""
    found: dict[str, str] = {}
    names: set[str] = set()

    def add(path: str) -> None:
        real = os.path.realpath(path)
        name = os.path.basename(real).lower()
        if real not in found and name not in names:
            found[real] = path
            names.add(name)

    for p in paths:
        p = os.path.expanduser(os.fspath(p))
        if os.path.isfile(p):
            add(p)
        elif os.path.isdir(p):
            files = []
            for root, dirs, fnames in os.walk(p, followlinks=True):
                dirs.sort()
                files.extend(os.path.join(root, f) for f in sorted(fnames) if f.lower().endswith(FONT_EXTENSIONS))
            for f in sorted(files):
                add(f)
    return sorted(found.values())


def default_font_paths() -> list[str]:
    return find_font_files(DEFAULT_FONT_DIRS)


def _mask(font: ImageFont.FreeTypeFont, ch: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The glyph's ink, cropped tight: (mask (h, w) uint8, (left, top)) relative to the pen position on the
    ascender line. An empty (0, 0) mask for a glyph without ink."""
    core, (left, top) = font.getmask2(ch, mode="L")
    if core.size[0] == 0 or core.size[1] == 0:
        return np.zeros((0, 0), np.uint8), (left, top)
    mask = np.asarray(Image.Image()._new(core))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), np.uint8), (left, top)
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.ascontiguousarray(mask[y0:y1, x0:x1]), (left + int(x0), top + int(y0))


def _signature(mask: np.ndarray, offset: tuple[int, int]) -> tuple:
    return mask.shape, offset, mask.tobytes()


def check_font(path: str, chars: str, case_sensitive: bool = True) -> tuple[frozenset, str]:
    """-> (characters of `chars` the font at `path` draws, reason it is rejected or '').

    Whitespace counts as drawn when it has a positive advance. See the module docstring for the rules.
    """
    try:
        font = ImageFont.truetype(path, CHECK_SIZE, layout_engine=_LAYOUT)
    except Exception as e:  # FreeType raises OSError/ValueError for broken or unsupported files
        return frozenset(), f"cannot load ({type(e).__name__}: {e})"
    try:
        absent = {_signature(*_mask(font, c)) for c in _ABSENT}
        signatures: dict[str, tuple] = {}
        glyphs: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}
        covered = []
        for c in chars:
            if c.isspace():
                if font.getlength(c) > 0:
                    covered.append(c)
                continue
            mask, offset = _mask(font, c)
            if mask.size == 0 or int(mask.max()) < 128:
                continue  # blank glyph
            sig = _signature(mask, offset)
            if sig in absent:
                continue  # the font's missing-glyph box
            signatures[c] = sig
            glyphs[c] = (mask, offset)
            covered.append(c)
    except Exception as e:
        return frozenset(), f"cannot render ({type(e).__name__}: {e})"
    shared = Counter(signatures.values())
    good = {c for c in covered if c.isspace() or shared[signatures[c]] <= _MAX_SHARED}
    if case_sensitive:
        # Lower case drawn with the upper-case glyph (caps-only faces) would teach wrong labels.
        good -= {c for c in list(good) if c in signatures and len(c.upper()) == 1 and c.upper() != c
                 and c.upper() in signatures and signatures[c][::2] == signatures[c.upper()][::2]}
    if not good:
        return frozenset(), "draws none of the characters"
    score = letter_shape_score({c: glyphs[c] for c in good if c in glyphs})
    if score is not None and score < SHAPE_MIN_SCORE:
        return frozenset(), f"glyphs do not look like letters (shape score {score:.2f}): picture font"
    return frozenset(good), ""


# ---- letter-shape check -----------------------------------------------------------------------------------
# A picture (dingbat) font maps letters to drawings. Each glyph is reduced to a small bitmap placed relative to
# the baseline and cap height; the font's score is the fraction of its letters and digits whose nearest
# neighbour among DejaVu's glyphs is the same character (case folded). Text faces, even display ones, score
# 0.3-1; picture fonts score under 0.1.
SHAPE_MIN_SCORE = 0.15
_SHAPE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_SHAPE_MIN_GLYPHS = 20


def _shape_features(glyphs: dict[str, tuple[np.ndarray, tuple[int, int]]]) -> dict[str, np.ndarray]:
    ref = next((c for c in "HIEXNTL0" if c in glyphs), None)
    if ref is None:
        return {}
    cap = glyphs[ref][0].shape[0]
    baseline = glyphs[ref][1][1] + cap
    top, rows = baseline - 1.4 * cap, int(np.ceil(1.9 * cap)) + 1
    out = {}
    for c in _SHAPE_CHARS:
        if c not in glyphs:
            continue
        mask, (_, y) = glyphs[c]
        canvas = np.zeros((rows, mask.shape[1]), np.uint8)
        y0 = int(round(y - top))
        a, b = max(0, y0), min(rows, y0 + mask.shape[0])
        if b <= a:
            continue
        canvas[a:b] = mask[a - y0:b - y0]
        small = np.asarray(Image.fromarray(canvas).resize((10, 20), Image.BILINEAR), np.float32).ravel()
        v = np.append(small, 60.0 * min(mask.shape[1] / cap, 2.0))  # width relative to cap height
        v -= v.mean()
        norm = float(np.linalg.norm(v))
        if norm > 0:
            out[c] = v / norm
    return out


@functools.lru_cache(maxsize=1)
def _reference_shapes() -> tuple[np.ndarray, np.ndarray] | None:
    """Shape features of the DejaVu text faces (proportional ones), or None when DejaVu is not installed."""
    refs = [p for p in default_font_paths()
            if os.path.basename(p).startswith("DejaVu") and "Mono" not in os.path.basename(p)]
    keys, rows = [], []
    for path in refs:
        font = ImageFont.truetype(path, CHECK_SIZE, layout_engine=_LAYOUT)
        for c, v in _shape_features({c: _mask(font, c) for c in _SHAPE_CHARS}).items():
            keys.append(c.lower())
            rows.append(v)
    if not rows:
        logger.info("DejaVu fonts not found: the letter-shape (picture font) check is skipped")
        return None
    return np.stack(rows), np.array(keys)


def letter_shape_score(glyphs: dict[str, tuple[np.ndarray, tuple[int, int]]]) -> float | None:
    """Fraction of letters/digits recognised as themselves by nearest neighbour against DejaVu; None when
    too few letters/digits are drawn to judge (e.g. a CJK charset) or DejaVu is absent."""
    if sum(c in glyphs for c in _SHAPE_CHARS) < _SHAPE_MIN_GLYPHS:
        return None
    reference = _reference_shapes()
    if reference is None:
        return None
    feats = _shape_features(glyphs)
    if len(feats) < _SHAPE_MIN_GLYPHS:
        return 0.0  # letters drawn, but none of the reference capitals/digits: not a text face
    matrix, keys = reference
    chars = list(feats)
    nearest = keys[(np.stack([feats[c] for c in chars]) @ matrix.T).argmax(axis=1)]
    return float(np.mean([n == c.lower() for n, c in zip(nearest, chars)]))


# ---- coverage cache ---------------------------------------------------------------------------------------
CHECK_VERSION = 1  # bump when the rules change, to invalidate cached results


def _cache_dir() -> str:
    base = os.environ.get("MASTEROCR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "masterocr")
    return os.path.join(base, "fonts")


def _cache_file(chars: str, case_sensitive: bool) -> str:
    digest = hashlib.sha1(f"{CHECK_VERSION}|{CHECK_SIZE}|{case_sensitive}|{chars}".encode()).hexdigest()[:16]
    return os.path.join(_cache_dir(), f"coverage-{digest}.json")


def _load_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(path: str, data: dict) -> None:
    """Atomic write; a read-only or full disk only costs the next run a re-check."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".coverage-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError as e:
        logger.debug("font coverage cache not written (%s)", e)


def check_fonts(paths: Sequence[str], chars: str, case_sensitive: bool = True,
                use_cache: bool = True) -> dict[str, tuple[frozenset, str]]:
    """check_font for each path, remembered on disk per (file, size, modification time, characters)."""
    cache_path = _cache_file(chars, case_sensitive)
    cache = _load_cache(cache_path) if use_cache else {}
    results, changed = {}, False
    probe = _probe_chars(chars) if len(chars) > 400 else None
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            results[path] = (frozenset(), f"cannot read ({e})")
            continue
        stamp = [st.st_mtime, st.st_size]
        hit = cache.get(path)
        if hit and hit[0] == stamp:
            results[path] = (frozenset(hit[1]), hit[2])
            continue
        if probe is not None:
            # Large charsets (CJK): a look at a sample first rejects fonts of other scripts cheaply.
            quick, reason = check_font(path, probe, case_sensitive)
            if len(quick) < 0.1 * len(probe):
                results[path] = (frozenset(quick), reason or "draws too few of the characters")
                cache[path] = [stamp, "".join(sorted(quick)), results[path][1]]
                changed = True
                continue
        results[path] = check_font(path, chars, case_sensitive)
        cache[path] = [stamp, "".join(sorted(results[path][0])), results[path][1]]
        changed = True
    if use_cache and changed:
        _save_cache(cache_path, cache)
    return results


class FontSet:
    """The fonts usable for a set of characters, their sampling weights, and glyph caches."""

    def __init__(self, fonts: Sequence[FontInfo], group_weights: dict[str, float] | None = None,
                 name_weights: dict[str, float] | None = None):
        if not fonts:
            raise ValueError("no usable font")
        self.fonts = list(fonts)
        group_weights = group_weights or {}
        try:
            patterns = [(re.compile(k, re.IGNORECASE), float(v)) for k, v in (name_weights or {}).items()]
        except re.error as e:
            raise ValueError(f"fonts.name_weights: bad regular expression ({e})") from None
        groups = Counter(f.group for f in self.fonts)
        w = []
        for f in self.fonts:
            weight = float(group_weights.get(f.group, 1.0)) / groups[f.group]
            name = os.path.basename(f.path)
            for pattern, factor in patterns:
                if pattern.search(name):
                    weight *= factor
            w.append(weight)
        w = np.array(w)
        if not (w > 0).any():
            raise ValueError(f"fonts.group_weights {group_weights}: every usable font has weight 0")
        self.weights = w / w.sum()
        self._cum = cumulative(self.weights)
        self.coverage = frozenset().union(*(f.coverage for f in self.fonts))
        self._cover_sets = [f.coverage for f in self.fonts]
        self._fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
        self._glyphs: dict[tuple[int, int, str], tuple] = {}
        self._kerns: dict[tuple[int, int, str, str], float] = {}
        self._kerned: dict[tuple[int, int], bool] = {}
        self._metrics: dict[tuple[int, int], tuple[int, int]] = {}

    @classmethod
    def build(cls, chars: str, paths: Iterable[str | os.PathLike] | None = None, min_coverage: float = 0.3,
              case_sensitive: bool = True, group_weights: dict[str, float] | None = None,
              name_weights: dict[str, float] | None = None, exclude: Sequence[str] = (),
              use_cache: bool = True) -> "FontSet":
        """Check every font under `paths` (files or folders; default: the system font folders) against
        `chars` and keep those drawing at least `min_coverage` of them.

        Raises ValueError naming the folders when no font qualifies.
        """
        if paths:
            paths = [os.fspath(p) for p in paths]
            missing = [p for p in paths if not os.path.exists(os.path.expanduser(p))]
            if missing:
                raise ValueError(f"font path {missing[0]}: no such file or folder")
        else:
            paths = list(DEFAULT_FONT_DIRS)
        files = find_font_files(paths)
        if not files:
            raise ValueError(f"no font files (.ttf, .otf, .ttc) in {paths}")
        excluded = [e.lower() for e in exclude if e]
        files = [f for f in files if not any(e in os.path.basename(f).lower() for e in excluded)]
        needed = max(1, len([c for c in chars if not c.isspace()]))
        fonts, rejected = [], Counter()
        for path, (coverage, reason) in check_fonts(files, chars, case_sensitive, use_cache).items():
            if not reason and len([c for c in coverage if not c.isspace()]) < min_coverage * needed:
                reason = "draws too few of the characters"
            if reason:
                rejected["picture font" if "picture font" in reason else reason.split(" (")[0]] += 1
                continue
            fonts.append(FontInfo(path, coverage, _group(path)))
        if not fonts:
            raise ValueError(f"no font in {paths} draws at least {min_coverage:.0%} of the {needed} characters "
                             f"needed ({len(files)} font files; rejected: {dict(rejected) or 'none'})")
        logger.info("fonts: %d usable of %d checked (rejected: %s)", len(fonts), len(files), dict(rejected))
        return cls(fonts, group_weights, name_weights)

    def __len__(self) -> int:
        return len(self.fonts)

    def __getstate__(self):  # FreeType objects do not pickle; a worker rebuilds its caches lazily
        state = self.__dict__.copy()
        for cache in ("_fonts", "_glyphs", "_kerns", "_kerned", "_metrics"):
            state[cache] = {}
        return state

    def covering(self, text: str) -> np.ndarray:
        """Indices of the fonts that draw every character of `text`."""
        need = set(text)
        return np.array([i for i, cov in enumerate(self._cover_sets) if need <= cov], dtype=np.int64)

    def sample(self, rng: np.random.Generator) -> int:
        """A font index drawn by weight."""
        return pick(rng, self._cum)

    def choose(self, text: str, rng: np.random.Generator) -> int | None:
        """A font for `text`, drawn by weight; None when no font draws all of it."""
        i = pick(rng, self._cum)
        if set(text) <= self._cover_sets[i]:
            return i
        ok = self.covering(text)
        if len(ok) == 0:
            return None
        p = self.weights[ok]
        return int(ok[pick(rng, cumulative(p))])

    def font(self, index: int, size: int) -> ImageFont.FreeTypeFont:
        key = (index, size)
        font = self._fonts.get(key)
        if font is None:
            if len(self._fonts) > 2048:
                self._fonts.clear()
            font = ImageFont.truetype(self.fonts[index].path, size, layout_engine=_LAYOUT)
            self._fonts[key] = font
        return font

    def glyph(self, index: int, size: int, ch: str) -> tuple[np.ndarray, int, int, float]:
        """-> (mask (h, w) uint8, left, top, advance): the mask's top-left is at (pen + left, top) with the
        ascender line at y=0."""
        key = (index, size, ch)
        g = self._glyphs.get(key)
        if g is None:
            if len(self._glyphs) > 150_000:  # ~100 MB at 48-pixel glyphs
                self._glyphs.clear()
            font = self.font(index, size)
            mask, (left, top) = _mask(font, ch)
            mask.flags.writeable = False  # shared by every later sample: never modified in place
            g = (mask, left, top, float(font.getlength(ch)))
            self._glyphs[key] = g
        return g

    def kern(self, index: int, size: int, a: str, b: str) -> float:
        """Pair kerning in pixels (the font's own kern table): the pair's advance minus both glyphs' own."""
        kerned = self._kerned.get((index, size))
        if kerned is None:
            kerned = self._kerned[(index, size)] = self._probe_kerning(index, size)
        if not kerned:
            return 0.0
        key = (index, size, a, b)
        k = self._kerns.get(key)
        if k is None:
            if len(self._kerns) > 300_000:
                self._kerns.clear()
            pair = float(self.font(index, size).getlength(a + b))
            k = pair - self.glyph(index, size, a)[3] - self.glyph(index, size, b)[3]
            self._kerns[key] = k
        return k

    def _probe_kerning(self, index: int, size: int) -> bool:
        """Whether the font kerns at all (with the basic layout only a `kern` table counts): most fonts
        do not, and then every pair lookup, a FreeType call each, is skipped."""
        font = self.font(index, size)
        for pair in _KERN_PROBES:
            if abs(font.getlength(pair) - font.getlength(pair[0]) - font.getlength(pair[1])) > 1e-6:
                return True
        return False

    def preload(self, chars: str, size: int) -> int:
        """Draw every glyph of `chars` each font covers at `size` into the cache (a warm start for long runs
        and benchmarks); returns the number of glyphs cached."""
        for index, info in enumerate(self.fonts):
            for ch in chars:
                if ch in info.coverage:
                    self.glyph(index, size, ch)
            if (index, size) not in self._kerned:  # whether the font kerns (pairs are looked up as they come)
                self._kerned[(index, size)] = self._probe_kerning(index, size)
        return len(self._glyphs)

    def metrics(self, index: int, size: int) -> tuple[int, int]:
        """(ascent, descent) in pixels."""
        m = self._metrics.get((index, size))
        if m is None:
            m = self._metrics[(index, size)] = self.font(index, size).getmetrics()
        return m


def _group(path: str) -> str:
    """The collection a font belongs to: the first folder below fonts/truetype, fonts/opentype, ... (so
    roboto/unhinted/RobotoTTF/x.ttf is "roboto"), else its parent folder."""
    parts = os.path.normpath(path).split(os.sep)[:-1]
    for anchor in ("truetype", "opentype", "type1", "fonts"):
        if anchor in parts:
            below = [p for p in parts[len(parts) - parts[::-1].index(anchor):] if p not in ("public", "local")]
            if below:
                return below[0]
    return parts[-1] if parts else ""


def _probe_chars(chars: str, n: int = 64) -> str:
    """A fixed, evenly spread sample of `chars` (the same in every process)."""
    step = max(1, len(chars) // n)
    return chars[::step][:n]
