"""masterocr: scene text recognition centred on MASTER.

`import masterocr` stays cheap: `load` and `Recognizer` (and the torch they need) are imported on first use.

    rec = masterocr.load("master-small")        # or a .safetensors / .ckpt path
    rec.read("word.png").text
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "Recognizer", "ReadResult", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from masterocr.reading import ReadResult
    from masterocr.recognizer import Recognizer, load

_LAZY = {"load": "masterocr.recognizer", "Recognizer": "masterocr.recognizer",
         "ReadResult": "masterocr.reading"}


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
