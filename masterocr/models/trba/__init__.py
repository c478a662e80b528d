"""TRBA: config dataclass and the exportable nn.Module."""

from .model import TRBA, TRBAConfig

__all__ = ["TRBA", "TRBAConfig", "build_trba"]


def build_trba(model_cfg) -> TRBA:
    """`model:` config section (dict or DictConfig) -> TRBA."""
    return TRBA(TRBAConfig.from_model_cfg(model_cfg))
