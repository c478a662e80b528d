"""Image decoding, resizing and normalisation: the one image pipeline every model and command uses.

Pillow + NumPy only (no torchvision); torch is imported only to wrap the final array as a tensor, so the
torch-free runtime shares this exact pipeline. Images go in as files, bytes, PIL images or arrays and come
out as (C, H, W) float32 arrays (or tensors) normalised to [-1, 1].
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING, Callable, Union

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # pragma: no cover
    import torch

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

# Refuse decompression bombs early with a clear error instead of exhausting memory.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """An image that cannot be decoded; the message names the input."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


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
    """HxW or HxWxC (C in 1, 3, 4) uint8/float array -> PIL. Floats in [0, 1] are scaled to [0, 255]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an HxW or HxWx3/4 image")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(source: ImageSource, grayscale: bool = False) -> Image.Image:
    """Decode an image from a path, bytes, PIL image or array into RGB (or L when `grayscale`).

    Applies EXIF orientation. Raises ImageError naming the input when it is missing, empty, truncated,
    not an image, or larger than MAX_PIXELS.
    """
    name = _describe(source)
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, np.ndarray):
            img = _array_to_image(source)
        else:
            if isinstance(source, (str, os.PathLike)):
                if not os.path.isfile(source):
                    raise ImageError(f"{name}: no such file")
                with open(source, "rb") as f:
                    data = f.read()
            else:
                data = source
            if not data:
                raise ImageError(f"{name}: empty file")
            with warnings.catch_warnings():  # PIL only warns between 1x and 2x MAX_PIXELS; we refuse below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:  # checked from the header, before decoding
                raise ImageError(f"{name}: image too large ({img.width}x{img.height} pixels, "
                                 f"limit {MAX_PIXELS})")
            img.load()  # decode now so truncation is caught here, not later
        img = ImageOps.exif_transpose(img) or img
        if img.width < 1 or img.height < 1:
            raise ImageError(f"{name}: image has zero size")
        img = _to_rgb(img)
        return img.convert("L") if grayscale else img
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (unknown format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from None
    except Exception as e:  # PIL raises many types for bad files; name the input and move on
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def content_width(image_size: tuple[int, int], height: int, width: int, keep_aspect: bool) -> int:
    """Columns of the (height, width) model input that `resize` fills with an image of (w, h) `image_size`:
    all of them when stretching; with keep_aspect the scaled width (capped), the rest being padding."""
    if not keep_aspect:
        return width
    w0, h0 = image_size
    return max(1, min(width, round(w0 * height / h0)))


def resize(img: Image.Image, height: int, width: int, keep_aspect: bool = False,
           fill: int | tuple[int, ...] = 0) -> Image.Image:
    """Resize to exactly (height, width).

    keep_aspect=False stretches (the MASTER/PARSeq default). keep_aspect=True scales to the target height,
    caps the width, and pads on the right with `fill`.
    """
    if not keep_aspect:
        return img.resize((width, height), Image.BICUBIC)
    new_w = content_width(img.size, height, width, keep_aspect)
    scaled = img.resize((new_w, height), Image.BICUBIC)
    if new_w == width:
        return scaled
    canvas = Image.new(img.mode, (width, height), fill)
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
    """load -> (augment) -> resize -> normalise. One object, shared by training, evaluation and reading."""

    def __init__(self, height: int, width: int, keep_aspect: bool = False, grayscale: bool = False,
                 augment: Callable[[Image.Image], Image.Image] | None = None,
                 mean: float = 0.5, std: float = 0.5):
        self.height, self.width = int(height), int(width)
        self.keep_aspect = keep_aspect
        self.grayscale = grayscale
        self.augment = augment
        self.mean, self.std = mean, std

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def array(self, source: ImageSource) -> np.ndarray:
        """One image -> (C, H, W) float32 array (the torch-free form; `__call__` wraps it as a tensor)."""
        img = load_image(source, grayscale=self.grayscale)
        if self.augment is not None:
            img = self.augment(img)
        img = resize(img, self.height, self.width, self.keep_aspect)
        return to_array(img, self.mean, self.std)

    def __call__(self, source: ImageSource) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.array(source))


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

    def array(self, source: ImageSource) -> np.ndarray:
        img = self.rotation(load_image(source, grayscale=self.transform.grayscale))
        return np.stack([self.transform.array(rotate_image(img, d)) for d in ROTATIONS])  # (4, C, H, W)

    def __call__(self, source: ImageSource) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.array(source))
