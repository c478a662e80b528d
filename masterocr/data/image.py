"""Image decoding, resizing and normalisation: the one image pipeline every model and command uses.

Pillow + NumPy only (no torchvision); torch is imported only to wrap the final array as a tensor, so the
torch-free runtime shares this exact pipeline. Images go in as files, bytes, PIL images or arrays and come
out as (C, H, W) float32 arrays (or tensors) normalised to [-1, 1].
"""

from __future__ import annotations

import errno
import io
import math
import os
import warnings
from typing import TYPE_CHECKING, Callable, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

if TYPE_CHECKING:  # pragma: no cover
    import torch

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]  # or a binary file object (.read())

# Refuse decompression bombs early with a clear error instead of exhausting memory.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ACCEPTED = "a path (str or pathlib.Path), encoded image bytes, a binary file object, a PIL image or a NumPy array"


class ImageError(ValueError):
    """An image that cannot be decoded; the message names the input and `reason` says why in a few words
    (what summaries count: "no such file", "not an image file", ...)."""

    def __init__(self, message: str, reason: str = "cannot decode"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep the reason through pickling (DataLoader workers)
        return type(self), (str(self), self.reason)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source) or "''"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    name = getattr(source, "name", None)
    if isinstance(name, (str, bytes)) and hasattr(source, "read"):
        return os.fsdecode(name)
    return f"<{type(source).__module__}.{type(source).__name__}>".replace("<builtins.", "<")


def _read_path(path: str | os.PathLike, name: str) -> bytes:
    """The bytes of an image file; ImageError saying what the path is when it is not a readable file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image file", "not a file") from None
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(f"{name}: dangling symbolic link (to {os.readlink(path)!r}, which does not exist)",
                             "dangling link") from None
        raise ImageError(f"{name}: no such file", "no such file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied", "permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError(f"{name}: symbolic link loop", "symlink loop") from None
        raise ImageError(f"{name}: cannot read ({e.strerror or e})", "cannot read") from None


def _unsupported(source: object) -> ImageError:
    kind = f"{type(source).__module__}.{type(source).__qualname__}".replace("builtins.", "")
    hint = ""
    if kind.startswith("torch."):
        hint = ("; for an image tensor pass tensor.numpy() as an (H, W[, C]) array, or hand a preprocessed "
                "(B, C, H, W) batch to Recognizer.predict")
    elif source is None:
        kind = "None"
    elif isinstance(source, (list, tuple)):
        hint = "; a list of images goes to read() itself, not inside another list"
    return ImageError(f"<{kind}>: not an image input (expected {ACCEPTED}){hint}", "unsupported input")

def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16/32-bit grey is rescaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_image(arr: np.ndarray) -> Image.Image:
    """HxW or HxWxC (C in 1, 3, 4) array -> PIL. uint8 is taken as it is; other integer types must hold
    0..255 (uint16 is scaled down); floats must be finite, in [0, 1] (scaled to 255) or [0, 255]. Anything
    else is refused (ImageError) rather than clipped into a wrong picture."""
    name = _describe(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        hint = (" (channels first? pass arr.transpose(1, 2, 0))"
                if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] > 4 else "")
        raise ImageError(f"{name}: shape {arr.shape} is not an HxW or HxWx1/3/4 image{hint}", "bad array")
    if arr.size == 0:
        raise ImageError(f"{name}: image has zero size", "zero size")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(f"{name}: integer values must lie in 0..255, these span {lo}..{hi}", "bad array")
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageError(f"{name}: holds {int((~np.isfinite(arr)).sum())} NaN or infinite values",
                             "bad array")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 255.0:
            raise ImageError(f"{name}: float values must lie in [0, 1] or [0, 255], these span "
                             f"[{lo:g}, {hi:g}]", "bad array")
        arr = np.round(arr * 255.0 if hi <= 1.0 else arr).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"{name}: dtype {arr.dtype} is not an image type (use uint8, or floats in [0, 1])",
                         "bad array")
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(source: ImageSource, grayscale: bool = False, name: str | None = None) -> Image.Image:
    """Decode an image from a path, bytes, a binary file object, a PIL image or an array into RGB (or L when
    `grayscale`).

    Applies EXIF orientation. Raises ImageError naming the input (`name`, e.g. the dataset sample the bytes
    came from, else a description of `source`) when it is missing, not a regular file, empty, truncated,
    not an image, or larger than MAX_PIXELS; or when `source` is of a type that holds no image.
    """
    name = name or _describe(source)
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, np.ndarray):
            img = _array_to_image(source)
        else:
            if isinstance(source, (str, os.PathLike)):
                data = _read_path(source, name)
            elif isinstance(source, (bytes, bytearray, memoryview)):
                data = bytes(source)
            elif hasattr(source, "read"):
                data = source.read()
                if not isinstance(data, (bytes, bytearray)):
                    raise ImageError(f"{name}: file object gives {type(data).__name__}, not bytes "
                                     "(open it in binary mode, 'rb')", "unsupported input")
            else:
                raise _unsupported(source)
            if not data:
                raise ImageError(f"{name}: empty file", "empty file")
            with warnings.catch_warnings():  # PIL only warns between 1x and 2x MAX_PIXELS; we refuse below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:  # checked from the header, before decoding
                raise ImageError(f"{name}: image too large ({img.width}x{img.height} pixels, "
                                 f"limit {MAX_PIXELS})", "too large")
            img.load()  # decode now so truncation is caught here, not later
        # exif_transpose copies an image it leaves alone: ask first (the loader's hot path; same decision).
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img) or img
        if img.width < 1 or img.height < 1:
            raise ImageError(f"{name}: image has zero size", "zero size")
        img = _to_rgb(img)
        return img.convert("L") if grayscale else img
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (unknown format)", "not an image file") from None
    except Image.DecompressionBombError:  # more than twice the limit: PIL refuses before we see the size
        raise ImageError(f"{name}: image too large (more than {MAX_PIXELS} pixels, the limit)",
                         "too large") from None
    except Exception as e:  # PIL raises many types for bad files; name the input and move on
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})", "cannot decode") from None


def content_width(image_size: tuple[int, int], height: int, width: int, keep_aspect: bool) -> int:
    """Columns of the (height, width) model input that `resize` fills with an image of (w, h) `image_size`:
    all of them when stretching; with keep_aspect the scaled width (capped), the rest being padding."""
    if not keep_aspect:
        return width
    w0, h0 = image_size
    return max(1, min(width, round(w0 * height / h0)))


PADS = ("zero", "edge")


def canvas_width(img_width: int, img_height: int, height: int, width: int, width_step: int = 0) -> int:
    """Width of a keep-aspect canvas for an image of img_width x img_height scaled to `height`: `width`, or with
    width_step > 0 the image's longer side scaled to `height`, rounded up to a multiple of width_step, at most
    `width`. EasyOCR's rule (width_step = height): ceil(max(w/h, h/w)) * height, so a tall crop gets the
    canvas it would have lying on its side."""
    if width_step <= 0:
        return width
    span = max(img_width / img_height, img_height / img_width) * height
    return min(width, max(1, math.ceil(round(span, 6) / width_step)) * width_step)


def resize(img: Image.Image, height: int, width: int, keep_aspect: bool = False,
           fill: int | tuple[int, ...] = 0, pad: str = "zero", width_step: int = 0) -> Image.Image:
    """Resize to (height, width), or with keep_aspect to the target height on a canvas.

    keep_aspect=False stretches (the MASTER/PARSeq default). keep_aspect=True scales to the target height,
    caps the width at `width` and pads on the right up to the canvas width (`width`, or with width_step > 0
    EasyOCR's canvas, see canvas_width). pad="zero" fills with `fill`; pad="edge" repeats the image's last
    column (EasyOCR's border padding).
    """
    if not keep_aspect:
        return img.resize((width, height), Image.BICUBIC)
    if pad not in PADS:
        raise ValueError(f"pad {pad!r}: choose one of {PADS}")
    new_w = content_width(img.size, height, width, keep_aspect)
    scaled = img.resize((new_w, height), Image.BICUBIC)
    canvas_w = canvas_width(img.width, img.height, height, width, width_step)
    if new_w == canvas_w:
        return scaled
    if pad == "edge":
        arr = np.asarray(scaled)
        widths = ((0, 0), (0, canvas_w - new_w)) + (((0, 0),) if arr.ndim == 3 else ())
        return Image.fromarray(np.pad(arr, widths, mode="edge"), scaled.mode)
    canvas = Image.new(img.mode, (canvas_w, height), fill)
    canvas.paste(scaled, (0, 0))
    return canvas


ROTATIONS = (0, 90, 180, 270)
_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def rotate_image(img: Image.Image, degrees: int) -> Image.Image:
    """Rotate counter-clockwise by 0/90/180/270 degrees (no interpolation, the canvas follows the image)."""
    degrees = int(degrees) % 360
    if degrees == 0:
        return img
    if degrees not in _TRANSPOSE:
        raise ValueError(f"rotation {degrees}: choose one of {ROTATIONS}")
    return img.transpose(_TRANSPOSE[degrees])


# A crop this many times taller than wide is taken for a word turned on its side (PaddleOCR's reader uses the
# same rule): turning it a quarter leaves the model an upright or an upside-down word, both learnable, instead of
# a word squeezed into a few rows of the 32-pixel-high input.
TALL_RATIO = 1.5


def turn_tall(img: Image.Image, ratio: float = TALL_RATIO) -> Image.Image:
    """Turn `img` 90 degrees counter-clockwise when its height is at least `ratio` times its width (a word
    turned clockwise, reading top to bottom, comes out upright; one turned the other way, upside down)."""
    return rotate_image(img, 90) if ratio and img.height >= ratio * img.width else img


class Rotate:
    """Picklable augment hook for ImageTransform: turn every image by a fixed 0/90/180/270 degrees (applied
    before resizing, as a rotated photo would arrive)."""

    def __init__(self, degrees: int):
        self.degrees = int(degrees) % 360
        if self.degrees not in ROTATIONS:
            raise ValueError(f"rotation {degrees}: choose one of {ROTATIONS}")

    def __call__(self, img: Image.Image) -> Image.Image:
        return rotate_image(img, self.degrees)


def to_array(img: Image.Image, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    """PIL -> (C, H, W) float32 array, (x/255 - mean) / std: [-1, 1] with the defaults."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    out = arr.transpose(2, 0, 1).astype(np.float32, order="C")  # (C, H, W), one contiguous copy
    # (x / 255 - mean) / std as one scale and one shift, in place: the loader's hot path.
    out *= np.float32(1.0 / (255.0 * std))
    out -= np.float32(mean / std)
    return out


def to_tensor(img: Image.Image, mean: float = 0.5, std: float = 0.5) -> "torch.Tensor":
    """PIL -> (C, H, W) float tensor, (x/255 - mean) / std: [-1, 1] with the defaults."""
    import torch

    return torch.from_numpy(to_array(img, mean, std))


class ImageTransform:
    """load -> (augment) -> resize -> normalise. One object, shared by training, evaluation and reading.

    keep_aspect, pad and width_step are resize()'s. tall_turn > 0 turns images at least that many times taller
    than wide by 90 degrees (see turn_tall) before resizing. With width_step > 0 images come out with different
    widths; `collate` pads a batch of them to its widest image the same way (so an image's own padding and the
    batch's padding agree).
    """

    def __init__(self, height: int, width: int, keep_aspect: bool = False, grayscale: bool = False,
                 augment: Callable[[Image.Image], Image.Image] | None = None,
                 mean: float = 0.5, std: float = 0.5, pad: str = "zero", width_step: int = 0,
                 tall_turn: float = 0.0):
        self.height, self.width = int(height), int(width)
        self.tall_turn = float(tall_turn or 0.0)
        self.keep_aspect = keep_aspect
        self.grayscale = grayscale
        self.augment = augment
        self.mean, self.std = mean, std
        if pad not in PADS:
            raise ValueError(f"pad {pad!r}: choose one of {PADS}")
        self.pad = pad
        self.width_step = int(width_step or 0)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def array(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        """One image -> (C, H, W) float32 array (the torch-free form; `__call__` wraps it as a tensor).
        `name` is what an error calls the image (e.g. the dataset sample its bytes came from)."""
        img = load_image(source, grayscale=self.grayscale, name=name)
        if self.augment is not None:
            img = self.augment(img)
        if self.tall_turn:
            img = turn_tall(img, self.tall_turn)
        img = resize(img, self.height, self.width, self.keep_aspect, pad=self.pad, width_step=self.width_step)
        return to_array(img, self.mean, self.std)

    def __call__(self, source: ImageSource, name: str | None = None) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.array(source, name))

    def collate(self, arrays: list[np.ndarray]) -> np.ndarray:
        """(C, H, W_i) arrays -> one (B, C, H, max W_i) float32 batch, narrower images padded on the right as
        this transform pads (edge: their last column repeated; zero: the fill, normalised)."""
        widest = max(a.shape[-1] for a in arrays)
        out = []
        for a in arrays:  # (C, H, W_i), or (views, C, H, W_i) for orientation search
            extra = widest - a.shape[-1]
            if extra:
                widths = ((0, 0),) * (a.ndim - 1) + ((0, extra),)
                a = (np.pad(a, widths, mode="edge") if self.pad == "edge" else
                     np.pad(a, widths, constant_values=(0.0 - self.mean) / self.std))
            out.append(a)
        return np.stack(out).astype(np.float32, copy=False)


class OrientationViews:
    """Orientation search input: one image -> its four turns (0, 90, 180, 270 degrees counter-clockwise),
    each through `transform`, as a (4, C, H, W) array (`array`) or tensor (`__call__`). A recognizer reads all
    four and keeps the most confident reading; `rotation` first turns the input itself (measuring)."""

    def __init__(self, transform: ImageTransform, rotation: int = 0):
        self.transform = transform
        self.rotation = Rotate(rotation)

    @property
    def height(self) -> int:
        return self.transform.height

    @property
    def width(self) -> int:
        return self.transform.width

    def array(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        img = self.rotation(load_image(source, grayscale=self.transform.grayscale, name=name))
        views = [self.transform.array(rotate_image(img, d)) for d in ROTATIONS]
        return self.transform.collate(views)  # (4, C, H, W): same-width views stacked, others padded

    def __call__(self, source: ImageSource, name: str | None = None) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.array(source, name))


class TallViews(OrientationViews):
    """`--orientation tall` input: an image at least `ratio` times taller than wide -> (2, C, H, W): the image
    turned a quarter (turn_tall), then as it is; any other image -> (C, H, W) as `transform` makes it. A
    recognizer reads both views of a tall crop and keeps the more confident (a word on its side, or a genuinely
    tall upright crop such as one letter); wide crops cost one reading."""

    def __init__(self, transform: ImageTransform, rotation: int = 0, ratio: float = TALL_RATIO):
        super().__init__(transform, rotation)
        self.ratio = float(ratio)

    def array(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        img = self.rotation(load_image(source, grayscale=self.transform.grayscale, name=name))
        turned = turn_tall(img, self.ratio)
        if turned is img:
            return self.transform.array(img)
        return self.transform.collate([self.transform.array(turned), self.transform.array(img)])
