"""What every recognizer returns, how it reads a list of inputs, and the reading half of a recognizer
(`RecognizerBase`: image pipeline, orientation search, batching): shared by the torch `Recognizer` and the
torch-free runtime's `OnnxRecognizer`, so both behave the same for good and bad input. Imports neither torch
nor models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from masterocr.data.image import (ROTATIONS, ImageError, ImageSource, ImageTransform, OrientationViews, Rotate,
                                  TallViews)

ON_ERROR = ("auto", "raise", "skip")
ORIENTATIONS = ("upright", "tall", "auto")
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


UPRIGHT_MARGIN = 0.05


def most_confident_turns(readings: list[ReadResult], views: int, upright_margin: float = 0.0) -> list[ReadResult]:
    """Readings of B images' `views` turns each (image-major, turns in ROTATIONS order) -> per image the most
    confident one, its `orientation` set to the turn that gave it. The upright reading (the first turn) is
    kept unless another turn's confidence beats it by more than `upright_margin`."""
    out = []
    for start in range(0, len(readings), views):
        group = readings[start:start + views]
        best = max(range(views), key=lambda v: group[v].confidence)  # ties: the first turn (upright)
        if group[best].confidence - group[0].confidence <= upright_margin:
            best = 0
        group[best].orientation = ROTATIONS[best]
        out.append(group[best])
    return out


def more_confident_of_tall_views(readings: list[ReadResult], counts: list[int]) -> list[ReadResult]:
    """Readings of TallViews' views (`counts` per image: 2 for a tall crop, turned then as is; 1 otherwise) ->
    one per image: a tall crop's more confident view (ties: the turned one), `orientation` 90 when turned."""
    out, start = [], 0
    for n in counts:
        group = readings[start:start + n]
        start += n
        if n == 2 and group[1].confidence > group[0].confidence:
            out.append(group[1])
        else:
            group[0].orientation = 90 if n == 2 else 0
            out.append(group[0])
    return out


class RecognizerBase:
    """The reading half every recognizer shares, whatever runs the model (torch, ONNX Runtime).

    A subclass sets `self.transform` (its ImageTransform), `self.batch_size` and `self.orientation`, and
    provides `_predict(images, need_attention)` for a (B, C, H, W) batch of its own array type, and
    `_from_array(array)` turning a NumPy array into that type. This class gives the image pipeline
    (`preprocess`, `collate`, `make_transform`), orientation search (`orientation="auto"`: every image read in
    its four turns, the most confident reading kept) and the read loop (`read`, `predict_batch`).
    """

    # The orientation search keeps the upright reading unless another turn is more confident by more than this:
    # the smallest margin that cost master-small no upright word on SVT/train (its selection set), while the
    # plain maximum lost 3 of 257 (benchmarks/orientation_margin.py; README "Rotated text").
    upright_margin: float = UPRIGHT_MARGIN
    # Orientation "tall" reads crops at least this many times taller than wide both as they are and turned. Not
    # the training rule's 1.5 (TALL_RATIO): short words turned a quarter are less than 1.5x taller than wide, and
    # reading every crop taller than wide both ways read more of SVT/train's turned words at no upright cost
    # (benchmarks/tall_ratio.py, chosen by a rule written beforehand; README "Rotated text").
    tall_ratio: float = 1.0

    transform: ImageTransform
    batch_size: int

    def _from_array(self, array: np.ndarray) -> Any:
        """A NumPy float32 array -> what `_predict` takes."""
        raise NotImplementedError

    def _predict(self, images: Any, need_attention: bool) -> list[ReadResult]:
        """Read a non-empty (B, C, H, W) batch."""
        raise NotImplementedError

    # ---- configuration ----

    @property
    def img_size(self) -> tuple[int, int]:
        return self.transform.height, self.transform.width

    @property
    def keep_aspect(self) -> bool:
        return self.transform.keep_aspect

    @property
    def orientation(self) -> str:
        """"upright": read images as they are; "tall": read crops at least `tall_ratio` (1.0) times taller
        than wide both turned a quarter and as they are, and keep the more confident reading (a model trained
        with data.tall_turn reads words turned either way; wide crops cost one reading); "auto": read each in its
        four turns (0/90/180/270) and keep the most confident reading (4x the model work), for text of unknown
        orientation."""
        return self._orientation

    @orientation.setter
    def orientation(self, value: str) -> None:
        if value not in ORIENTATIONS:
            raise ValueError(f"orientation {value!r}: choose one of {ORIENTATIONS}")
        self._orientation = value
        self._input = self.make_transform()

    def make_transform(self, rotation: int = 0) -> ImageTransform | OrientationViews:
        """This recognizer's image pipeline, optionally rotating each image first (robustness tests); with
        orientation "auto" it gives each image's four turns (see OrientationViews)."""
        t = self.transform
        if self.orientation == "auto":
            return OrientationViews(t, rotation)
        if self.orientation == "tall":
            return TallViews(t, rotation, self.tall_ratio)
        return ImageTransform(t.height, t.width, keep_aspect=t.keep_aspect, grayscale=t.grayscale,
                              augment=Rotate(rotation) if rotation % 360 else None, mean=t.mean, std=t.std,
                              pad=t.pad, width_step=t.width_step)

    def collate(self, prepared: Sequence[Any]) -> Any:
        """`preprocess` outputs -> one (B, C, H, W) batch, or (B, 4, C, H, W) with orientation "auto"; images
        of different widths (a transform with width_step) are padded to the widest as the transform pads."""
        arrays = [np.asarray(p, dtype=np.float32) for p in prepared]
        if len({a.shape[-1] for a in arrays}) <= 1:
            return self._from_array(np.stack(arrays))
        return self._from_array(self.transform.collate(arrays))

    # ---- the model call ----

    def predict(self, images: Any, need_attention: bool = True) -> list[ReadResult]:
        """Read a preprocessed batch: images (B, C, H, W) as made by `self.transform`, or (B, 4, C, H, W) as
        made by the orientation search's views (the most confident turn of each image is kept).

        need_attention=False skips collecting the cross-attention maps (evaluation does not need them).
        """
        if isinstance(images, np.ndarray):
            images = self._from_array(images)
        if images.ndim == 5:  # (B, 4, C, H, W): each image in its four turns (orientation search)
            views = int(images.shape[1])
            flat = self.predict(images.reshape(-1, *images.shape[2:]), need_attention)  # (B * 4) readings
            return most_confident_turns(flat, views, self.upright_margin)
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W) or (B, 4, C, H, W), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            return []
        return self._predict(images, need_attention)

    # ---- reading ----

    def preprocess(self, source: ImageSource) -> Any:
        """One image -> (C, H, W), or (4, C, H, W) with orientation "auto", or (2, C, H, W) for a tall crop with
        orientation "tall". Raises ImageError naming the input."""
        return self._from_array(prepare(self._input.array, source))

    def predict_batch(self, prepared: list[Any], need_attention: bool = True) -> list[ReadResult]:
        """Read a list of `preprocess` outputs as one batch (what a server gathering requests calls)."""
        if self.orientation == "tall":  # tall crops come as two views (turned, as is): one flat batch
            flat, counts = [], []
            for p in prepared:
                views = p if p.ndim == 4 else p[None]  # (2, C, H, W) for a tall crop, else one view
                flat.extend(views)
                counts.append(len(views))
            readings = self.predict(self.collate(flat), need_attention)
            return more_confident_of_tall_views(readings, counts)
        return self.predict(self.collate(prepared), need_attention)  # (B, C, H, W) or (B, 4, C, H, W)

    def read(self, x: ImageSource | Sequence[ImageSource], batch_size: int | None = None,
             on_error: str = "auto") -> ReadResult | list[ReadResult]:
        """Read one image or a list of images (paths, PIL images, NumPy arrays, bytes), batched.

        A list gives one ReadResult per input, in order; an input that cannot be read gives a result whose
        `error` names it (empty text), and the others are still read. on_error="raise" raises ImageError
        instead; "auto" (default) raises for a single input and skips in a list (see read_batched).
        """
        return read_batched(x, self.preprocess, self.predict_batch,
                            self.batch_size if batch_size is None else batch_size, on_error)


__all__ = ["ON_ERROR", "ORIENTATIONS", "ReadResult", "RecognizerBase", "failed", "is_single", "looks_like_path",
           "most_confident_turns", "prepare", "read_batched"]
