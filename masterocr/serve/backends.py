"""Which recognizer the server runs. The server only needs the recognizer contract:
`preprocess(source)` (decode + resize one image, raising ImageError naming it) and
`predict_batch(list_of_prepared) -> list[ReadResult]`; any backend that returns such an object plugs in here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def _load_torch(model: str | None, precision: str | None = None) -> Any:
    from masterocr.recognizer import load

    return load(model, precision=precision or "fp32")


def _load_onnx(model: str | None, precision: str | None = None) -> Any:
    from masterocr.runtime import is_export_folder, load

    if not is_export_folder(model):
        raise ValueError(f"{model}: the onnx backend serves an export folder (write one with "
                         "`masterocr export MODEL -o DIR`)")
    return load(model, precision=precision)


BACKENDS: dict[str, Callable[..., Any]] = {"torch": _load_torch, "onnx": _load_onnx}


def load_recognizer(model: str | None, backend: str = "torch", precision: str | None = None) -> Any:
    """A recognizer for `model` (bundled name or path; None: the bundled default) on `backend`; precision None:
    the model's own."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](model, precision)


def describe(rec: Any, name: str, backend: str) -> dict:
    """What /v1/models tells about a loaded recognizer (fields a backend lacks are left out)."""
    info: dict[str, Any] = {"name": name, "backend": backend}
    img_size = getattr(rec, "img_size", None)
    if img_size is not None:
        info["img_size"] = [int(v) for v in img_size]
    keep_aspect = getattr(rec, "keep_aspect", None)
    if keep_aspect is not None:
        info["keep_aspect"] = bool(keep_aspect)
    charset = getattr(getattr(rec, "tokenizer", None), "charset", None)
    if charset is not None:
        info["charset_size"] = len(charset)
    precision = getattr(rec, "precision", None)
    if isinstance(precision, str):
        info["precision"] = precision
    return info


def model_display_name(model: str | os.PathLike | None) -> str:
    """What /v1/models calls a model: the bundled name, or a path's file name without suffix."""
    if model is None:
        from masterocr.recognizer import default_model_name

        return default_model_name()
    return Path(model).stem if (os.sep in str(model) or Path(model).suffix) else str(model)
