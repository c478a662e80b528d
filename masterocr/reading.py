"""What every recognizer returns and how it reads a list of inputs: shared by the torch `Recognizer` and the
torch-free runtime, so both behave the same for good and bad input. Imports neither torch nor models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from masterocr.data.image import ImageError, ImageSource

ON_ERROR = ("auto", "raise", "skip")
Prepared = TypeVar("Prepared")


@dataclass
class ReadResult:
    """One reading: the text, its confidence (sequence probability, incl. the end token for attention
    models), the probability of each character, and the decoder's cross-attention for each character
    as a (len(text), Hf, Wf) array over the model's feature map (None for models without attention).

    An input that could not be read gives a result with `error` set (the message names the input), empty
    text and confidence 0, so a loop over `read([...])` never meets None. `orientation`: the degrees the
    input was turned counter-clockwise to be read (0 unless the reader searched orientations).
    """

    text: str
    confidence: float
    char_probs: list[float] = field(default_factory=list)
    attention: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None
    orientation: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def failed(message: str) -> ReadResult:
    return ReadResult("", 0.0, [], None, message)


def is_single(x: Any) -> bool:
    """One input (a path, bytes, PIL image or array) rather than a list/tuple of them."""
    return not isinstance(x, (list, tuple))


def looks_like_path(data: bytes) -> bool:
    """Short printable UTF-8 text: what os.fsencode(path) gives, not image data (the file system is not asked,
    so a server passing uploads through never reveals which paths exist)."""
    if len(data) > 4096:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return text.isprintable() and ("/" in text or "." in text)


def prepare(convert: Callable[[ImageSource], Prepared], source: ImageSource) -> Prepared:
    """convert(source) (an ImageTransform, or its array()), with one hint added to its ImageError: bytes
    that look like a path were meant as a file name. Every recognizer's preprocess goes through here."""
    try:
        return convert(source)
    except ImageError as e:
        if isinstance(source, bytes) and e.reason == "not an image file" and looks_like_path(source):
            raise ImageError(f"{e}; bytes are read as encoded image data: to read a file, pass its path as "
                             "str", e.reason) from None
        raise


def read_batched(sources: ImageSource | Sequence[ImageSource], prepare: Callable[[ImageSource], Prepared],
                 predict: Callable[[list[Prepared]], list[ReadResult]], batch_size: int,
                 on_error: str = "auto") -> ReadResult | list[ReadResult]:
    """Prepare each input, predict in batches of `batch_size`, keep the input order.

    on_error: "raise" raises ImageError naming the first bad input; "skip" gives a result with `error` in
    its place (and warns); "auto" (default) raises for a single input and skips in a list, so one bad file
    never costs the readings of the others.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error {on_error!r}: choose one of {', '.join(ON_ERROR)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size {batch_size}: must be 1 or more")
    single = is_single(sources)
    items = [sources] if single else list(sources)
    skip = on_error == "skip" or (on_error == "auto" and not single)
    batch_size = int(batch_size)
    results: list[ReadResult | None] = [None] * len(items)
    for start in range(0, len(items), batch_size):
        prepared, index = [], []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                prepared.append(prepare(items[i]))
                index.append(i)
            except ImageError as e:
                if not skip:
                    raise
                warnings.warn(str(e), stacklevel=3)
                results[i] = failed(str(e))
        if prepared:
            for i, r in zip(index, predict(prepared)):
                results[i] = r
    return results[0] if single else results  # type: ignore[return-value]


__all__ = ["ON_ERROR", "ReadResult", "failed", "is_single", "looks_like_path", "prepare", "read_batched"]
