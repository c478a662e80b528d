"""Text sources for synthetic words: dictionary words, pseudo-words, random strings, numbers, dates, prices,
codes and corpus chunks, each filtered to what the charset can express.

A TextSampler draws the text to *render* (mixed case, as signs show it). The training label is that text
normalised for the charset (charset.normalize_label): a case-insensitive charset gets the lower-cased label of
an upper-case sign, as real annotated crops do. All randomness comes from the numpy Generator passed in.
"""

from __future__ import annotations

import calendar
import functools
import os
import unicodedata
from typing import Sequence

import numpy as np

from ...charset import normalize_label
from .config import TextConfig
from .sampling import cumulative, pick

DEFAULT_WORDLISTS = ("/usr/share/dict/words", "/usr/share/dict/american-english-large",
                     "/usr/share/dict/american-english", "/usr/share/dict/british-english")
SOURCES = ("words", "pseudo", "random", "numbers", "dates", "prices", "codes", "corpus")
CASES = ("lower", "upper", "title", "mixed")
_MAKERS = {"words": "_word", "pseudo": "_pseudo", "random": "_random", "numbers": "_number", "dates": "_date",
           "prices": "_price", "codes": "_code", "corpus": "_corpus_chunk"}

_ONSETS = ("b", "bl", "br", "c", "ch", "cl", "cr", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "h", "j", "k",
           "l", "m", "n", "p", "pl", "pr", "qu", "r", "s", "sh", "sl", "sm", "sp", "st", "str", "t", "th", "tr",
           "v", "w", "wh", "z", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "y", "io")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "ck", "ng", "st", "rt", "x", "ll", "ss")
_PUNCT_AFTER = ("!", ".", ",", ":", "?", "'s", "*")
_PUNCT_AROUND = (("(", ")"), ('"', '"'), ("'", "'"), ("[", "]"), ("<", ">"))
_MONTHS = tuple(calendar.month_abbr[1:])
_MONTH_NAMES = tuple(calendar.month_name[1:])
_DAYS = tuple(calendar.day_abbr)


def renderable_chars(charset: str) -> str:
    """Characters that may appear in rendered text: the charset, plus upper-case letters when the charset is
    case-insensitive (their label is lower-cased by normalize_label)."""
    chars = dict.fromkeys(charset)
    if not any(c.isupper() for c in charset) and any(c.islower() for c in charset):
        for c in charset:
            up = c.upper()
            if len(up) == 1 and up != c:
                chars.setdefault(up)
    return "".join(chars)


@functools.lru_cache(maxsize=16)
def _load_wordlist(path: str, allowed: frozenset, max_length: int) -> tuple[str, ...]:
    """Words of `path` made of `allowed` characters only (possessives "'s" dropped, they repeat the word)."""
    words = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                word = unicodedata.normalize("NFC", line.strip())
                if not word or len(word) > max_length or word.endswith("'s"):
                    continue
                if allowed.issuperset(word):
                    words.append(word)
    except OSError as e:
        raise ValueError(f"word list {path}: cannot read ({e})") from None
    return tuple(dict.fromkeys(words))


@functools.lru_cache(maxsize=16)
def _words_for(paths: tuple[str, ...], allowed: frozenset, max_length: int) -> tuple[str, ...]:
    """Words of the lists whose characters can be shown in some case (they are case-mapped when drawn)."""
    closure = set(allowed)
    for c in allowed:
        closure.update(x for x in (c.lower(), c.upper()) if len(x) == 1)
    closure = frozenset(closure)
    words: list[str] = []
    for path in paths:
        words.extend(_load_wordlist(path, closure, max_length))
    return tuple(dict.fromkeys(words))


@functools.lru_cache(maxsize=16)
def _load_corpus(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [unicodedata.normalize("NFC", " ".join(line.split())) for line in f]
    except OSError as e:
        raise ValueError(f"corpus file {path}: cannot read ({e})") from None
    return tuple(line for line in lines if line)


class TextSampler:
    """Draws (text to render, label) pairs whose label is non-empty, inside the charset, <= max_length."""

    def __init__(self, charset: str, max_length: int = 25, config: TextConfig | None = None):
        self.config = config or TextConfig()
        self.charset = charset
        self.max_length = int(max_length)
        if self.max_length < 1:
            raise ValueError(f"max_length {max_length}: must be >= 1")
        self.render_chars = renderable_chars(charset)
        self.allowed = frozenset(self.render_chars)
        self._charset_set = frozenset(charset)
        self._random_chars = np.array(list(charset.replace(" ", "") or charset))
        self.digits = "".join(c for c in "0123456789" if c in self.allowed)
        self.lower = "".join(c for c in "abcdefghijklmnopqrstuvwxyz" if c in self.allowed)
        self.upper = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c in self.allowed)
        self.words = self._load_words()
        self.corpus = [line for p in self.config.corpus_files for line in _load_corpus(os.fspath(p))]
        self.sources, source_p = self._usable_sources()
        self._source_cum = cumulative(source_p)
        case_w = np.array([max(0.0, float(self.config.case_weights.get(c, 0.0))) for c in CASES])
        unknown = set(self.config.case_weights) - set(CASES)
        if unknown:
            raise ValueError(f"text.case_weights: unknown case {sorted(unknown)[0]!r}; known: {CASES}")
        self._case_cum = cumulative(case_w)

    # ---- set-up -------------------------------------------------------------------------------------------
    def _load_words(self) -> list[str]:
        paths = list(self.config.wordlists) or [p for p in DEFAULT_WORDLISTS if os.path.isfile(p)]
        real = []
        for path in paths:
            if not os.path.isfile(path):
                raise ValueError(f"word list {path}: no such file")
            real.append(os.path.realpath(os.fspath(path)))
        return list(_words_for(tuple(dict.fromkeys(real)), self.allowed, self.max_length))

    def _usable_sources(self) -> tuple[list[str], np.ndarray]:
        weights = dict(self.config.weights)
        unknown = set(weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"text.weights: unknown source {sorted(unknown)[0]!r}; known: {SOURCES}")
        letters = len(self.lower) + len(self.upper) >= 10
        usable = {
            "words": bool(self.words),
            "pseudo": letters,
            "random": True,
            "numbers": len(self.digits) == 10,
            "dates": len(self.digits) == 10,
            "prices": len(self.digits) == 10,
            "codes": len(self.digits) == 10 and letters,
            "corpus": bool(self.corpus),
        }
        names = [s for s in SOURCES if usable[s] and weights.get(s, 0.0) > 0]
        if not names:
            names, p = ["random"], np.ones(1)
        else:
            p = np.array([float(weights[s]) for s in names])
        return names, p / p.sum()

    # ---- drawing ------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, tries: int = 20, max_length: int | None = None) -> tuple[str, str]:
        """-> (text to render, label). Falls back to a random string if a source keeps failing.

        max_length below self.max_length (a short-words-first curriculum) redraws longer texts, so short
        whole words come out rather than cut ones; only if every try is too long is the last one cut."""
        limit = self.limit(max_length)
        tries = tries if limit == self.max_length else max(tries, 60)  # short texts are a minority of draws
        too_long = None
        for _ in range(tries):
            source = self.sources[pick(rng, self._source_cum)]
            text = getattr(self, _MAKERS[source])(rng)
            result = self.finish(text)
            if result is not None and len(result[1]) <= limit:
                return result
            too_long = result or too_long
        result = self.finish(too_long[0], limit) if too_long else None
        result = result or self.finish(self._random(rng), limit)
        if result is None:  # cannot happen for a non-empty charset; keep the failure explicit
            raise RuntimeError(f"cannot draw a label over charset {self.charset[:20]!r}")
        return result

    def limit(self, max_length: int | None) -> int:
        """The label-length cap for one draw: self.max_length, or a lower curriculum cap (at least 1)."""
        return self.max_length if max_length is None else max(1, min(int(max_length), self.max_length))

    def finish(self, text: str, max_length: int | None = None) -> tuple[str, str] | None:
        """Drop characters that cannot be shown, cap the length, and derive the label; None if empty."""
        limit = self.limit(max_length)
        text = "".join(c for c in text if c in self.allowed).strip()
        if not text:
            return None
        label = normalize_label(text, self.charset)
        if len(label) > limit:
            text = text[:limit].strip()
            label = normalize_label(text, self.charset)
        if not label or not self._charset_set.issuperset(label):
            return None
        return text, label

    def _case(self, word: str, rng: np.random.Generator) -> str:
        case = CASES[pick(rng, self._case_cum)]
        if case == "upper":
            out = word.upper()
        elif case == "lower":
            out = word.lower()
        elif case == "title":
            out = word[:1].upper() + word[1:].lower()
        else:
            flips = rng.random(len(word)) < 0.5
            out = "".join(c.upper() if f else c.lower() for c, f in zip(word, flips))
        # Case mapping may leave the charset (e.g. an upper-case-only charset): keep the form that fits.
        return out if all(c in self.allowed for c in out) else word

    def _punctuate(self, word: str, rng: np.random.Generator) -> str:
        if rng.random() >= self.config.punctuation_p:
            return word
        if rng.random() < 0.7:
            marks = [m for m in _PUNCT_AFTER if all(c in self.allowed for c in m)]
            return word + marks[rng.integers(len(marks))] if marks else word
        pairs = [p for p in _PUNCT_AROUND if p[0] in self.allowed and p[1] in self.allowed]
        if not pairs:
            return word
        left, right = pairs[rng.integers(len(pairs))]
        return left + word + right

    def _word(self, rng: np.random.Generator) -> str:
        limit = self.config.long_word_length
        for _ in range(8):
            word = self.words[rng.integers(len(self.words))]
            if limit <= 0 or len(word) <= limit or rng.random() < np.exp(-(len(word) - limit) / 4):
                break
        if " " in self.allowed and rng.random() < 0.1:  # a two-word phrase when spaces are labels
            word += " " + self.words[rng.integers(len(self.words))]
        return self._punctuate(self._case(word, rng), rng)

    def _pseudo(self, rng: np.random.Generator) -> str:
        syllables = int(rng.integers(1, 4))
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       + _CODAS[rng.integers(len(_CODAS))] for _ in range(syllables))
        return self._punctuate(self._case(word, rng), rng)

    def _random(self, rng: np.random.Generator) -> str:
        cfg = self.config
        hi = min(cfg.random_max_length, self.max_length)
        n = int(rng.integers(min(cfg.random_min_length, hi), hi + 1))
        return "".join(self._random_chars[rng.integers(len(self._random_chars), size=n)])

    def _digits(self, rng: np.random.Generator, n: int) -> str:
        return "".join(str(d) for d in rng.integers(10, size=n))

    def _pick(self, rng: np.random.Generator, options: Sequence[str], default: str = "") -> str:
        ok = [o for o in options if all(c in self.allowed for c in o)]
        return ok[rng.integers(len(ok))] if ok else default

    def _number(self, rng: np.random.Generator) -> str:
        kind = rng.random()
        if kind < 0.45:  # a plain integer, short ones far more common (house numbers, floors, prices)
            return str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
        if kind < 0.6:  # thousands separator or decimal
            n = int(rng.integers(1000, 10 ** 7))
            sep = self._pick(rng, (",", ".", " "))
            return f"{n:,}".replace(",", sep)
        if kind < 0.75:
            return self._digits(rng, int(rng.integers(1, 4))) + self._pick(rng, (".", ",")) \
                + self._digits(rng, int(rng.integers(1, 3)))
        if kind < 0.9:  # phone numbers
            sep = self._pick(rng, ("-", " ", "."))
            return self._digits(rng, 3) + sep + self._digits(rng, 4)
        unit = self._pick(rng, ("%", "km", "kg", "m", "cm", "mm", "ml", "g", "h", "min", "KM", "MPH", "ft"))
        return str(int(rng.integers(1, 1000))) + unit

    def _date(self, rng: np.random.Generator) -> str:
        year, month, day = int(rng.integers(1950, 2035)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        kind = int(rng.integers(7))
        sep = self._pick(rng, ("/", "-", "."))
        if kind == 0:
            return f"{day:02d}{sep}{month:02d}{sep}{year}"
        if kind == 1:
            return f"{year}{sep}{month:02d}{sep}{day:02d}"
        if kind == 2:
            return f"{month}{sep}{day}{sep}{year % 100:02d}"
        if kind == 3:
            return str(year)
        if kind == 4:
            return f"{day}{_MONTHS[month - 1].upper()}" if rng.random() < 0.5 else f"{_MONTHS[month - 1]}{day}"
        if kind == 5:
            return self._case(_MONTH_NAMES[month - 1] if rng.random() < 0.5 else _DAYS[day % 7], rng)
        return f"{int(rng.integers(0, 24)):02d}{self._pick(rng, (':', '.', 'h'))}{int(rng.integers(0, 60)):02d}"

    def _price(self, rng: np.random.Generator) -> str:
        whole = str(int(rng.integers(0, 10 ** int(rng.integers(1, 4)))))
        cents = self._digits(rng, 2) if rng.random() < 0.7 else ""
        dot = self._pick(rng, (".", ","))
        amount = whole + dot + cents if cents and dot else whole
        symbol = self._pick(rng, ("$", "€", "£", "¥"))
        if rng.random() < 0.25:
            return amount + self._pick(rng, ("$", "€", "-", "p", "c", "EUR", "USD"))
        return symbol + amount

    def _code(self, rng: np.random.Generator) -> str:
        kind = int(rng.integers(6))
        letters = self.upper or self.lower
        if kind == 0:  # licence plate / serial: letters-digits blocks
            parts = ["".join(letters[j] for j in rng.integers(len(letters), size=int(rng.integers(1, 4)))),
                     self._digits(rng, int(rng.integers(2, 5)))]
            if rng.random() < 0.5:
                parts.reverse()
            return self._pick(rng, ("-", " ", "")).join(parts)
        if kind == 1:  # room / route / bus numbers
            return self._pick(rng, ("#", "No.", "No", "N", "Rm", "A", "B", "")) + self._digits(rng, int(rng.integers(1, 4)))
        if kind == 2:  # model numbers: mixed letters and digits
            alphabet = letters + self.digits
            return "".join(alphabet[j] for j in rng.integers(len(alphabet), size=int(rng.integers(3, 9))))
        if kind == 3:  # web and mail fragments
            word = self.words[rng.integers(len(self.words))].lower() if self.words else "shop"
            return self._pick(rng, ("www.", "@", "")) + word + self._pick(rng, (".com", ".org", ".net", ".co.uk", ""))
        if kind == 4:  # short uppercase abbreviations (EXIT, USA, MRT)
            return "".join(letters[j] for j in rng.integers(len(letters), size=int(rng.integers(2, 5))))
        return self._digits(rng, int(rng.integers(1, 3))) + self._pick(rng, ("st", "nd", "rd", "th", "F", "A", "B"))

    def _corpus_chunk(self, rng: np.random.Generator) -> str:
        line = self.corpus[rng.integers(len(self.corpus))]
        line = "".join(c for c in line if c in self.allowed or c == " ")
        if " " not in self.allowed:
            pieces = line.split()
            if len(pieces) > 1:  # a spaced script: one whole word
                return pieces[rng.integers(len(pieces))]
            line = pieces[0] if pieces else ""
        if not line:
            return ""
        # A window of the line (space-free scripts such as Chinese have one piece per line).
        n = int(rng.integers(1, min(len(line), self.max_length) + 1))
        start = int(rng.integers(0, len(line) - n + 1))
        return line[start:start + n]
