"""ViTSTR model: config dataclass and the exportable nn.Module."""

from .model import ViTSTR, ViTSTRConfig

__all__ = ["ViTSTR", "ViTSTRConfig", "build_vitstr"]


def build_vitstr(model_cfg) -> ViTSTR:
    """`model:` config section (dict or DictConfig) -> ViTSTR."""
    return ViTSTR(ViTSTRConfig.from_model_cfg(model_cfg))
