"""Helpers the model packages share: reading a `model:` config section into a model's config dataclass,
and building the feature extractor a recurrent recognizer names. Imports no model package."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

from torch import nn

C = TypeVar("C")
BACKBONES = ("vgg", "resnet")


def config_from_model_cfg(cls: type[C], model_cfg: Mapping[str, Any] | Any, name: str,
                          pairs: tuple[str, ...] = ("img_size",)) -> C:
    """`model:` section (dict or DictConfig) -> `cls` instance, for every model family. The name must be
    `name`; unknown keys are an error naming them; lists become tuples; each key in `pairs` must be
    [height, width]."""
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
        raise ValueError(f"unknown model config key(s) {unknown} for {name!r}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    cfg = cls(**values)
    for key in pairs:
        if len(getattr(cfg, key)) != 2:
            raise ValueError(f"model.{key}={getattr(cfg, key)!r} must be [height, width]")
    return cfg


def build_backbone(kind: str, in_channels: int, vgg_layers, resnet_channels: int) -> nn.Module:
    """"vgg" (a VGG layer list) or "resnet" (clovaai's ResNet of that output width); both have `out_channels`
    and `output_size(h, w)`."""
    from .layers import VGG, ClovaResNet

    if kind == "vgg":
        return VGG(in_channels, vgg_layers)
    if kind == "resnet":
        return ClovaResNet(in_channels, resnet_channels)
    raise ValueError(f"model.backbone={kind!r}: choose one of {BACKBONES}")
