"""The renderer's pixel operations on small uint8 / float32 NumPy arrays, through OpenCV, or through Pillow and
NumPy where OpenCV is not installed.

On word crops of a few thousand pixels a call's overhead is most of its cost, and OpenCV's calls cost several
times less than Pillow's (`python benchmarks/synth_speed.py --skip per-core loader profile deferred`: its `ops`
table). OpenCV is a requirement; the fallback keeps the renderer working on a machine that lacks it (a lent GPU
machine whose Python cannot take a 60 MB wheel), more slowly. The two give the same geometry and filters but not
the same bytes, so a seed renders the same pixels only with the same backend: `BACKEND` names the one in use.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageFilter

logger = logging.getLogger(__name__)

try:
    import cv2
except ImportError:  # pragma: no cover - exercised by the fallback test with OpenCV hidden
    cv2 = None

BACKEND = "opencv" if cv2 is not None else "pillow"
if cv2 is None:
    logger.warning("OpenCV (opencv-python-headless) is not installed: synthetic words are rendered with Pillow, "
                   "which is slower, and their pixels differ slightly from OpenCV's")

RESAMPLING = ("area", "linear", "cubic", "nearest")
if cv2 is not None:
    _CV_RESAMPLE = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                    "nearest": cv2.INTER_NEAREST_EXACT}
_PIL_RESAMPLE = {"area": Image.BOX, "linear": Image.BILINEAR, "cubic": Image.BICUBIC, "nearest": Image.NEAREST}


def single_threaded() -> None:
    """OpenCV's threads cost more than they give on crops this small (a third more CPU per warp, measured);
    parallelism comes from loader workers. Process-wide."""
    if cv2 is not None:
        cv2.setNumThreads(1)


# Homographies here map continuous coordinates (pixel i spans [i, i + 1)), as Pillow's do; OpenCV's map pixel
# centres (pixel i at i). Conjugating by a half-pixel shift turns one into the other.
_TO_CENTRES = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], np.float64)
_FROM_CENTRES = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float64)


def _per_plane(img: np.ndarray, op) -> np.ndarray:
    """Pillow `op` on an image, one grey plane at a time unless it is RGB: Pillow premultiplies the last band of
    LA and RGBA images when resampling, which would mix stacked masks."""
    if img.ndim == 3 and img.shape[2] != 3:
        return np.dstack([_per_plane(np.ascontiguousarray(img[:, :, c]), op) for c in range(img.shape[2])])
    return np.asarray(op(Image.fromarray(np.ascontiguousarray(img))))


def warp(src: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w) or (h, w, c <= 4) through the 3x3 homography `m` (input -> output, continuous coordinates)
    into an output of `size` (w, h): bilinear, zero outside."""
    if cv2 is not None:
        return cv2.warpPerspective(src, _TO_CENTRES @ m @ _FROM_CENTRES, size, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inverse = np.linalg.inv(m)
    coeffs = tuple((inverse / inverse[2, 2]).ravel()[:8])
    return _per_plane(src, lambda image: image.transform(size, Image.PERSPECTIVE, coeffs, Image.BILINEAR))


def resize(img: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """uint8 (h, w) or (h, w, c <= 4) to `size` (w, h); method: area (means), linear, cubic or nearest."""
    if cv2 is not None:
        return cv2.resize(img, size, interpolation=_CV_RESAMPLE[method])
    return _per_plane(img, lambda image: image.resize(size, _PIL_RESAMPLE[method]))


def remap(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """out[i, j] = src at (x[i, j], y[i, j]) (pixel centres at whole numbers), bilinear, zero outside; uint8 (h, w)
    source, float32 maps."""
    if cv2 is not None:
        return cv2.remap(src, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    h, w = src.shape
    x, y = np.clip(x, -1, w), np.clip(y, -1, h)
    x0, y0 = np.floor(x), np.floor(y)
    ax, ay = x - x0, y - y0
    xi, yi = x0.astype(np.intp) + 1, y0.astype(np.intp) + 1  # into the zero-padded source
    padded = np.pad(src, ((1, 2), (1, 2))).astype(np.float32)
    out = ((padded[yi, xi] * (1 - ax) + padded[yi, xi + 1] * ax) * (1 - ay)
           + (padded[yi + 1, xi] * (1 - ax) + padded[yi + 1, xi + 1] * ax) * ay)
    return (out + 0.5).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 (h, w) or (h, w, 3) blurred by a Gaussian of standard deviation `sigma` pixels (Pillow's radius)."""
    if cv2 is not None:
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).filter(ImageFilter.GaussianBlur(sigma)))


def correlate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) correlated with an odd-sized float32 kernel (centred), edges repeated."""
    if cv2 is not None:
        return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    h, w = img.shape[:2]
    padded = np.pad(img.astype(np.float32), ((ry, ry), (rx, rx), (0, 0)), mode="edge")
    total = np.zeros(img.shape, np.float32)
    for dy, dx in zip(*np.nonzero(kernel)):
        total += kernel[dy, dx] * padded[dy:dy + h, dx:dx + w]
    return (total + 0.5).astype(np.uint8)


def lookup(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) through a (3, 256) uint8 table, one row per channel."""
    if cv2 is not None:
        return cv2.LUT(img, np.ascontiguousarray(table.T)[None])
    return table[np.arange(3)[None, :], img]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float32 in about [0, 255] -> uint8, rounded and saturated."""
    if cv2 is not None:
        return cv2.convertScaleAbs(img)  # |x|: the renderer's layers and effects never go below zero
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def mean_colour(img: np.ndarray) -> np.ndarray:
    """(h, w, 3) -> its mean colour (3,) float32 (NumPy's strided axis-0 mean is slow on these)."""
    if cv2 is not None:
        return np.array(cv2.mean(img)[:3], np.float32)
    return img.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (h, w, 3) RGB through a JPEG file of `quality` and back (libjpeg's 4:2:0 chroma either way: the
    same bytes as a Pillow file)."""
    if cv2 is not None:
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # OpenCV's channel order, so luma weighs the right channels
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding of a {img.shape} crop failed")
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    # Decoded straight into an array of the known size: Image.open's marker parsing costs more than decoding.
    return np.asarray(Image.frombytes("RGB", (img.shape[1], img.shape[0]), buf.getbuffer(), "jpeg", "RGB", ""))
