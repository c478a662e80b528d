"""Foreign checkpoints -> masterocr weights (safetensors + config), never executing pickle code.

An importer is a function `(path) -> Imported` registered in IMPORTERS as "module:function" (imported lazily,
like models.MODELS). `masterocr import KIND SRC -o OUT.safetensors` runs one and saves the result.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Importing this module stays cheap (the CLI lists the kinds): torch and weights load on first use.
IMPORTERS: dict[str, str] = {
    "easyocr-g2": "masterocr.importers.easyocr:import_english_g2",
    "strhub": "masterocr.importers.strhub:import_strhub",
}


@dataclass
class Imported:
    """What an importer returns: tensors for a masterocr model, its `model:` config, and extra metadata
    (e.g. {"keep_aspect": True} or the source's name), kept in the written weights."""

    tensors: dict[str, "torch.Tensor"]
    model_cfg: dict
    extra: dict[str, Any] = field(default_factory=dict)


def importer_names() -> list[str]:
    return sorted(IMPORTERS)


def load_untrusted(path: str | os.PathLike) -> Any:
    """torch.load a foreign checkpoint with weights_only=True: tensors and plain containers come out, and
    a pickle that would construct a class or call a function is refused with a message naming the file."""
    from masterocr.weights import load_torch_file

    return load_torch_file(path)


def run_importer(kind: str, path: str | os.PathLike, **options: Any) -> Imported:
    """Run the importer registered as `kind` on `path`."""
    if kind not in IMPORTERS:
        raise ValueError(f"unknown import kind {kind!r}; choose one of {importer_names()}")
    module_name, func_name = IMPORTERS[kind].split(":")
    return getattr(importlib.import_module(module_name), func_name)(path, **options)


__all__ = ["IMPORTERS", "Imported", "importer_names", "load_untrusted", "run_importer"]
