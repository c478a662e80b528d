"""masterocr: scene text recognition centred on MASTER.

`import masterocr` stays cheap: `Recognizer` (and the torch it needs) is imported on first use, and `load`
imports torch only for weights: an export folder is read by the torch-free runtime (masterocr.runtime).

    rec = masterocr.load("master-small")        # or a .safetensors / .ckpt path, or an export folder
    rec.read("word.png").text
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "Recognizer", "ReadResult", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from masterocr.reading import ReadResult
    from masterocr.recognizer import Recognizer

_LAZY = {"Recognizer": "masterocr.recognizer", "ReadResult": "masterocr.reading"}


def load(name_or_path: str | os.PathLike | None = None, **options: Any):
    """A recognizer with `read()`, `preprocess()` and `predict_batch()`.

    A bundled model name, a .safetensors file or a training checkpoint gives a torch `Recognizer`
    (masterocr.recognizer.load, with its options: device, precision, ...). An export folder written by
    `masterocr export` gives the torch-free runtime's `OnnxRecognizer` (masterocr.runtime.load).
    """
    if name_or_path is not None and os.path.isdir(name_or_path):
        from masterocr.runtime import load as load_export

        return load_export(name_or_path, **options)
    from masterocr.recognizer import load as load_weights

    return load_weights(name_or_path, **options)


def __getattr__(name: str) -> Any:
    """Import the public API lazily (PEP 562) so that `import masterocr` does not import torch."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'masterocr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
