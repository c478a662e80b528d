"""Model registry: `build_model(model_cfg)` picks the builder named by `model_cfg.name`.

A new model is a package under masterocr/models/ plus one line in MODELS ("module:function", imported lazily
so building one model never imports the others).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from torch import nn

MODELS: dict[str, str] = {
    "master": "masterocr.models.master:build_master",
    "crnn": "masterocr.models.crnn:build_crnn",
    "trba": "masterocr.models.trba:build_trba",
    "seq2seq": "masterocr.models.seq2seq:build_seq2seq",
    "parseq": "masterocr.models.parseq:build_parseq",
    "vitstr": "masterocr.models.vitstr:build_vitstr",
}


def model_names() -> list[str]:
    return sorted(MODELS)


def build_model(model_cfg: Mapping[str, Any] | Any) -> nn.Module:
    """The `model:` section of a config (dict or DictConfig) -> nn.Module with `tokenizer`, `img_size`,
    `in_channels` (see each model's config dataclass for its keys)."""
    if model_cfg is None or "name" not in model_cfg:
        raise ValueError(f"model config needs a 'name' (one of {model_names()})")
    name = str(model_cfg["name"])
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; choose one of {model_names()}")
    module_name, func_name = MODELS[name].split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    try:
        return builder(model_cfg)
    except (ValueError, TypeError, RuntimeError, AssertionError, ZeroDivisionError) as e:  # sizes that do not fit
        raise ValueError(f"model config ({name}): cannot build the model from it: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


__all__ = ["MODELS", "build_model", "model_names"]
