"""Charsets, tokenizers and evaluation protocols: the one text layer every model shares.

Imports nothing else of masterocr. Ids are fixed by the charset alone, so a checkpoint that stores its
charset string can always rebuild the exact tokenizer it was trained with. Importable without torch (the
torch-free runtime decodes with these tokenizers): torch is imported only by the methods that build tensors,
and decoding accepts NumPy arrays as well as tensors.
"""

from __future__ import annotations

import functools
import os
import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch  # imported where tensors are made, so scoring text (`masterocr metrics`) needs no torch

DIGITS = string.digits
LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
# string.printable[:94] is digits, letters, punctuation: printable ASCII without whitespace.
BUILTIN_CHARSETS = {
    "36": DIGITS + LOWER,
    "62": DIGITS + LOWER + UPPER,
    "94": string.printable[:94],
}
DEFAULT_MAX_LENGTH = 25
# Named charsets shipped as files: masterocr/configs/charsets/<name>.txt (e.g. "fsns"), in either file format.
CHARSET_DIR = Path(__file__).resolve().parent / "configs" / "charsets"


@functools.lru_cache(maxsize=1)
def _shipped_charsets() -> dict[str, Path]:
    files = sorted(CHARSET_DIR.glob("*.txt")) if CHARSET_DIR.is_dir() else []
    return {p.stem: p for p in files if p.stem not in BUILTIN_CHARSETS}


def charset_names() -> list[str]:
    """Every charset name load_charset resolves: the built-in strings, then the shipped files."""
    return list(BUILTIN_CHARSETS) + list(_shipped_charsets())


def charset_file(name: str) -> Path | None:
    """The shipped file of a named charset, or None when `name` names none (a dict look-up: cheap per label)."""
    return _shipped_charsets().get(name)


def load_charset(spec: str | Sequence[str], with_space: bool = False) -> str:
    """Resolve a charset: a built-in name ("36", "62", "94"), a shipped name ("fsns"), a file, or a string.

    A file holds one character per line (thousands of CJK characters work), or is an id table in FSNS's
    `<id>\t<char>` format (see read_id_charset; its characters are taken in id order, the null left out).
    Duplicates are removed keeping the first.
    """
    if isinstance(spec, (list, tuple)):
        chars = "".join(spec)
    else:
        spec = str(spec)
        named = charset_file(spec) if spec not in BUILTIN_CHARSETS else None
        if spec in BUILTIN_CHARSETS:
            chars = BUILTIN_CHARSETS[spec]
        elif named is not None or os.path.isfile(spec):
            chars = _read_charset_file(str(named or spec))
        else:
            chars = spec
    chars = unicodedata.normalize("NFC", chars)
    if with_space and " " not in chars:
        chars += " "
    unique = "".join(dict.fromkeys(chars))
    if not unique:
        raise ValueError(f"charset {spec!r} is empty")
    return unique


@functools.lru_cache(maxsize=16)
def _read_charset_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    if _is_id_table(lines):
        return read_id_charset(path).chars
    # One character per line; a line holding a single space is the space character.
    bad = [(i + 1, line) for i, line in enumerate(lines) if len(line) > 1]
    if bad:
        raise ValueError(f"charset file {path}: line {bad[0][0]} holds {bad[0][1]!r}, expected one character "
                         "(or an `<id><TAB><char>` line on every line, as FSNS's charset files have)")
    return "".join(line for line in lines if line)


# ---- id tables (FSNS's charset files) -------------------------------------------------------------------

_ID_LINE = re.compile(r"(\d+)\t(.+)")
NULL_MARK = "<nul>"  # FSNS's charset files name the padding id's character so


def _is_id_table(lines: Sequence[str]) -> bool:
    content = [line for line in lines if line]
    return bool(content) and all(_ID_LINE.fullmatch(line) for line in content)


@dataclass(frozen=True)
class IdCharset:
    """A charset whose file fixes each character's id: FSNS's `charset_size=134.txt` format.

    Each line is `<id><TAB><char>`. Several lines may share an id: they are spellings of one class (FSNS
    maps ' and ‘ to the id of ’, and “ ” to the id of "), and the first line of an id gives the character
    that id decodes to, as the dataset's own decoder (tensorflow/models research/street) reads it. The
    character `<nul>` marks the null id, which pads `image/class` to a fixed length (37 in FSNS)."""

    path: str
    id_to_char: dict[int, str]       # canonical character of each id (the null id excluded)
    char_to_id: dict[str, int]       # every spelling, aliases included
    null_id: int | None

    @property
    def chars(self) -> str:
        """The canonical characters in id order: what a model trained on this data predicts."""
        return "".join(self.id_to_char[i] for i in sorted(self.id_to_char))

    def encode(self, text: str) -> list[int]:
        """Text -> ids (aliases map to their class); ValueError naming the first character outside."""
        try:
            return [self.char_to_id[c] for c in unicodedata.normalize("NFC", text)]
        except KeyError as e:
            raise ValueError(f"{text!r}: character {e.args[0]!r} is not in {self.path}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (null already removed) -> text; KeyError for an id the table lacks."""
        return "".join(self.id_to_char[int(i)] for i in ids)


@functools.lru_cache(maxsize=16)
def read_id_charset(spec: str | os.PathLike) -> IdCharset:
    """Read an id table from a file, or a shipped name ("fsns"). ValueError naming the file and line."""
    path = charset_file(str(spec)) or Path(spec)
    id_to_char: dict[int, str] = {}
    char_to_id: dict[str, int] = {}
    null_id = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            match = _ID_LINE.fullmatch(line)
            if match is None:
                raise ValueError(f"charset file {path}: line {lineno} is {line!r}, expected <id><TAB><char>")
            code, char = int(match.group(1)), match.group(2)
            if char == NULL_MARK:
                if null_id is not None and null_id != code:
                    raise ValueError(f"charset file {path}: line {lineno}: a second null id ({code}, "
                                     f"the first is {null_id})")
                null_id = code
                continue
            char = unicodedata.normalize("NFC", char)
            if len(char) != 1:
                raise ValueError(f"charset file {path}: line {lineno} maps id {code} to {char!r}, "
                                 "expected one character")
            if char_to_id.get(char, code) != code:
                raise ValueError(f"charset file {path}: line {lineno}: {char!r} has id {code} and "
                                 f"{char_to_id[char]} (an earlier line)")
            char_to_id[char] = code
            id_to_char.setdefault(code, char)  # the first spelling of an id is the one it decodes to
    if null_id is not None and null_id in id_to_char:
        raise ValueError(f"charset file {path}: id {null_id} is both the null and {id_to_char[null_id]!r}")
    if not id_to_char:
        raise ValueError(f"charset file {path}: no characters")
    return IdCharset(str(path), id_to_char, char_to_id, null_id)


def normalize_label(label: str, charset: str) -> str:
    """Canonical form of a label for training against `charset`.

    NFC only (never NFKD/ASCII folding, which would delete non-Latin text). If the charset has no upper-case
    letters but has lower-case ones, the label is lower-cased, as a case-insensitive model is trained.
    """
    if charset in BUILTIN_CHARSETS or charset_file(charset) is not None:
        charset = load_charset(charset)  # accept a name, as load_charset does
    label = unicodedata.normalize("NFC", label).strip()
    if _is_case_insensitive(charset):
        label = label.lower()
    return label


@functools.lru_cache(maxsize=64)
def _is_case_insensitive(charset: str) -> bool:
    """Lower-case letters but no upper-case ones (cached: charsets can hold thousands of characters)."""
    return not any(c.isupper() for c in charset) and any(c.islower() for c in charset)


# ---- evaluation protocols -------------------------------------------------------------------------------

def protocol_36(text: str) -> str:
    """The standard benchmark protocol: lower-case, keep only [0-9a-z]."""
    return "".join(c for c in text.lower() if c in BUILTIN_CHARSETS["36"])


def protocol_62(text: str) -> str:
    """Case-sensitive letters and digits."""
    return "".join(c for c in text if c in BUILTIN_CHARSETS["62"])


def protocol_94(text: str) -> str:
    """Printable ASCII without whitespace, case-sensitive."""
    return "".join(c for c in text if c in BUILTIN_CHARSETS["94"])


def protocol_raw(text: str) -> str:
    """No filtering: Unicode NFC and trimmed outer whitespace (for Chinese and other scripts)."""
    return unicodedata.normalize("NFC", text).strip()


PROTOCOLS: dict[str, Callable[[str], str]] = {
    "36": protocol_36,
    "62": protocol_62,
    "94": protocol_94,
    "raw": protocol_raw,
}


def get_protocol(name: str) -> Callable[[str], str]:
    try:
        return PROTOCOLS[str(name)]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None


# ---- tokenizers -----------------------------------------------------------------------------------------

def _float32(x: Any) -> np.ndarray:
    """A tensor (any device or float dtype) or array -> float32 NumPy array, for decoding on the CPU."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)

@dataclass
class Decoded:
    """One decoded sequence: text, probability of each character (and of EOS for attention models)."""

    text: str
    char_probs: list[float]
    confidence: float


class _Tokenizer:
    def __init__(self, charset: str | Sequence[str], max_length: int = DEFAULT_MAX_LENGTH):
        self.charset = load_charset(charset)
        self.max_length = int(max_length)
        self._char_to_id: dict[str, int] = {}

    def __len__(self) -> int:
        return self.num_tokens

    def in_charset(self, label: str) -> bool:
        return all(c in self._char_to_id for c in label)

    def _char_ids(self, label: str) -> list[int]:
        try:
            return [self._char_to_id[c] for c in label]
        except KeyError as e:
            raise ValueError(f"label {label!r} has character {e.args[0]!r} outside the charset") from None


class AttentionTokenizer(_Tokenizer):
    """Tokens for attention decoders: EOS=0, characters 1..N, BOS=N+1, PAD=N+2.

    The classifier predicts `num_classes = N + 1` outputs (EOS and characters); BOS and PAD are inputs only.
    """

    def __init__(self, charset: str | Sequence[str], max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__(charset, max_length)
        self.eos_id = 0
        self._char_to_id = {c: i + 1 for i, c in enumerate(self.charset)}
        self.bos_id = len(self.charset) + 1
        self.pad_id = len(self.charset) + 2
        self.num_classes = len(self.charset) + 1
        self.num_tokens = len(self.charset) + 3

    def encode(self, labels: Iterable[str], max_length: int | None = None) -> torch.Tensor:
        """labels -> (B, L + 2) ids: [BOS, c1..cn, EOS, PAD...], L = max_length (labels longer raise)."""
        import torch

        max_length = self.max_length if max_length is None else max_length
        labels = list(labels)
        out = torch.full((len(labels), max_length + 2), self.pad_id, dtype=torch.long)
        for row, label in enumerate(labels):
            ids = self._char_ids(label)
            if len(ids) > max_length:
                raise ValueError(f"label {label!r} is longer than max_length={max_length}")
            out[row, 0] = self.bos_id
            out[row, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
            out[row, len(ids) + 1] = self.eos_id
        return out

    def decode_ids(self, ids: Sequence[int]) -> str:
        """Characters up to the first EOS; BOS/PAD are skipped."""
        chars = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if 1 <= i <= len(self.charset):
                chars.append(self.charset[i - 1])
        return "".join(chars)

    def decode(self, probs: torch.Tensor | np.ndarray) -> list[Decoded]:
        """probs (B, T, num_classes) -> texts; confidence = product of max probs up to and including EOS."""
        probs = _float32(probs)
        return self.decode_chosen(probs.argmax(-1), probs.max(-1))

    def decode_chosen(self, token_ids: torch.Tensor | np.ndarray, token_probs: torch.Tensor | np.ndarray
                      ) -> list[Decoded]:
        """Chosen tokens (B, T) and their probabilities (B, T) -> texts, stopping at each row's first EOS.

        Beam search needs this form: its chosen token is not always the step's arg-max. Tensors or arrays."""
        results = []
        for row_ids, row_probs in zip(token_ids.tolist(), _float32(token_probs).tolist()):
            chars, char_probs, conf = [], [], 1.0
            for i, p in zip(row_ids, row_probs):
                conf *= p
                if i == self.eos_id:
                    break
                chars.append(self.charset[i - 1] if 1 <= i <= len(self.charset) else "")
                char_probs.append(p)
            results.append(Decoded("".join(chars), char_probs, conf))
        return results


class CTCTokenizer(_Tokenizer):
    """Tokens for CTC: blank=0, characters 1..N. `num_classes = N + 1`."""

    def __init__(self, charset: str | Sequence[str], max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__(charset, max_length)
        self.blank_id = 0
        self._char_to_id = {c: i + 1 for i, c in enumerate(self.charset)}
        self.num_classes = len(self.charset) + 1
        self.num_tokens = self.num_classes

    def encode(self, labels: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """labels -> (targets (B, max_len) padded with blank, lengths (B,)) for torch.nn.functional.ctc_loss."""
        import torch

        encoded = [self._char_ids(label) for label in labels]
        width = max([len(e) for e in encoded] + [1])
        targets = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        return targets, lengths

    def decode(self, probs: torch.Tensor | np.ndarray) -> list[Decoded]:
        """Best-path decoding of frame probabilities (B, T, num_classes), a tensor or an array: the arg-max
        class of every frame, repeats collapsed, blanks dropped.

        A character's probability is the highest probability any frame of its run gives it (a run: the
        consecutive frames whose arg-max is that character). The confidence is the probability of the whole
        text, P(text | image): the sum over every frame alignment that collapses to it (the CTC forward
        algorithm, exp(-CTC loss)). That is the quantity an attention model's confidence (the product of its
        tokens' probabilities, end token included) is for its own output; it is at least the best path's
        probability, and for an empty reading it is the probability that every frame is blank.
        """
        probs = _float32(probs)
        ids, max_probs = probs.argmax(-1), probs.max(-1)  # (B, T)
        results, label_ids = [], []
        for row_ids, row_probs in zip(ids.tolist(), max_probs.tolist()):
            chars, char_ids, char_probs, prev = [], [], [], self.blank_id
            for i, p in zip(row_ids, row_probs):
                if i != self.blank_id and i == prev:
                    char_probs[-1] = max(char_probs[-1], p)  # the run goes on: keep its peak
                elif i != self.blank_id:
                    chars.append(self.charset[i - 1])
                    char_ids.append(i)
                    char_probs.append(p)
                prev = i
            results.append(Decoded("".join(chars), char_probs, 0.0))
            label_ids.append(char_ids)
        for result, p in zip(results, self.text_probability(probs, label_ids).tolist()):
            result.confidence = p
        return results

    def text_probability(self, probs: torch.Tensor | np.ndarray, label_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """P(label | frames) for each row: probs (B, T, num_classes), one list of class ids per row -> (B,)
        float32. The CTC forward algorithm in log space (float64), vectorised over the batch; it computes what
        exp(-torch.nn.functional.ctc_loss) does, in NumPy so that the torch-free runtime shares it."""
        log_probs = np.log(np.maximum(_float32(probs), np.float32(1e-30))).astype(np.float64)  # (B, T, C)
        b, t = log_probs.shape[:2]
        if b == 0:
            return np.zeros(0, np.float32)
        lengths = np.array([len(ids) for ids in label_ids])
        s = 2 * max(int(lengths.max()), 0) + 1  # extended labels: blank, l1, blank, l2, ..., blank
        ext = np.full((b, s), self.blank_id, np.int64)
        for row, ids in enumerate(label_ids):
            ext[row, 1 : 2 * len(ids) : 2] = ids
        valid = np.arange(s)[None, :] < (2 * lengths + 1)[:, None]  # (B, S)
        # A label may skip the blank before it unless it repeats the label two positions back.
        skip = np.zeros((b, s), bool)
        skip[:, 2:] = (ext[:, 2:] != self.blank_id) & (ext[:, 2:] != ext[:, :-2])
        emit = np.take_along_axis(log_probs, np.broadcast_to(ext[:, None, :], (b, t, s)), 2)  # (B, T, S)
        alpha = np.full((b, s), -np.inf)
        alpha[:, 0] = emit[:, 0, 0]
        if s > 1:
            alpha[:, 1] = np.where(lengths > 0, emit[:, 0, 1], -np.inf)
        for frame in range(1, t):
            stay = alpha
            advance = np.concatenate([np.full((b, 1), -np.inf), alpha[:, :-1]], 1)
            jump = np.where(skip, np.concatenate([np.full((b, 2), -np.inf), alpha[:, :-2]], 1)[:, :s], -np.inf)
            alpha = np.logaddexp(np.logaddexp(stay, advance), jump) + emit[:, frame]
            alpha = np.where(valid, alpha, -np.inf)
        rows = np.arange(b)
        end = alpha[rows, 2 * lengths]  # ending on the last blank or on the last label
        last = np.where(lengths > 0, alpha[rows, np.maximum(2 * lengths - 1, 0)], -np.inf)
        return np.clip(np.exp(np.logaddexp(end, last)), 0.0, 1.0).astype(np.float32)
