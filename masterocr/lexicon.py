"""Lexicon-constrained decoding for the classic protocol (SVT-50, IIIT5K-50/1k): a reading is replaced by the
lexicon word nearest to it in edit distance.

Two file formats, detected from the content:
- per photo, SVT's `lexicon.txt`: `<photo id> WORD,WORD,...` a line; a crop belongs to the photo whose id its
  file name starts with, followed by `_<n>` (`18_01_3.png` -> photo `18_01`, as ../shared/data's README says);
- one global list: one word per line (every crop gets the whole list).
Both sides are compared after the evaluation protocol (e.g. lower-case alphanumerics for "36"), so the
snapped word is exactly a lexicon entry under the protocol. Ties go to the word listed first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein


class Lexicon:
    """Lexicon words per photo (`per_photo`) or one list for every crop (`words`)."""

    def __init__(self, words: list[str] | None = None, per_photo: dict[str, list[str]] | None = None,
                 source: str = ""):
        if bool(words) == bool(per_photo):
            raise ValueError("a lexicon has either one global word list or word lists per photo")
        self.words, self.per_photo, self.source = words or [], per_photo or {}, source

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Lexicon":
        """Read either format; ValueError naming the file and line for a malformed or empty file."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except OSError as e:
            raise ValueError(f"lexicon {path}: cannot read ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"lexicon {path}: not UTF-8 text ({e.reason})") from None
        entries = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        if not entries:
            raise ValueError(f"lexicon {path}: no words")
        per_photo = all(len(text.split(None, 1)) == 2 for _, text in entries) and any("," in t for _, t in entries)
        if not per_photo:
            for n, text in entries:
                if len(text.split()) != 1:
                    raise ValueError(f"lexicon {path}:{n}: expected one word a line (or `<photo id> W1,W2,...` "
                                     f"on every line), got {text[:80]!r}")
            return cls(words=[text for _, text in entries], source=str(path))
        photos: dict[str, list[str]] = {}
        for n, text in entries:
            photo, words = text.split(None, 1)
            listed = [w.strip() for w in words.split(",") if w.strip()]
            if not listed:
                raise ValueError(f"lexicon {path}:{n}: photo {photo!r} lists no words")
            if photo in photos:
                raise ValueError(f"lexicon {path}:{n}: photo {photo!r} listed twice")
            photos[photo] = listed
        return cls(per_photo=photos, source=str(path))

    def words_for(self, file: str) -> list[str]:
        """The lexicon of the crop `file` (a path or name). KeyError naming the file when its photo is not in
        a per-photo lexicon."""
        if self.words:
            return self.words
        stem = Path(file).stem
        photo = stem
        while photo:
            if photo in self.per_photo:
                return self.per_photo[photo]
            if "_" not in photo:
                break
            photo = photo.rsplit("_", 1)[0]  # 18_01_3 -> 18_01
        raise KeyError(f"{file}: no photo of lexicon {self.source} matches this file name "
                       f"(expected <photo id>_<n>, e.g. 18_01_3.png for photo 18_01)")

    def snap(self, prediction: str, file: str, normalize: Callable[[str], str] = str) -> str:
        """The word of `file`'s lexicon nearest to `prediction` in edit distance, both under `normalize`."""
        choices = list(dict.fromkeys(w for w in (normalize(w) for w in self.words_for(file)) if w))
        if not choices:
            return normalize(prediction)
        word, _, _ = process.extractOne(normalize(prediction), choices, scorer=Levenshtein.distance)
        return word
