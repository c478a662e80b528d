"""Reading a `model:` config section into a model's config dataclass (shared by the ViT-based models)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping


def parse_model_config(cls, model_cfg: Mapping[str, Any] | Any, name: str, pairs: tuple[str, ...] = ("img_size",)):
    """`model:` section (dict or DictConfig) -> cls(**values). Unknown keys and a wrong `name` are errors
    naming them; lists become tuples; each key in `pairs` must be [height, width]."""
    if hasattr(model_cfg, "_metadata"):  # OmegaConf DictConfig -> plain dict
        from omegaconf import OmegaConf
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    values = dict(model_cfg)
    given = values.pop("name", name)
    if given != name:
        raise ValueError(f"model.name={given!r}: {cls.__name__} builds {name!r} models only")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    cfg = cls(**values)
    for key in pairs:
        if len(getattr(cfg, key)) != 2:
            raise ValueError(f"model.{key}={getattr(cfg, key)!r} must be [height, width]")
    return cfg
