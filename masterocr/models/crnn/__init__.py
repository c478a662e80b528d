"""CRNN: config dataclass and the exportable nn.Module."""

from .model import CRNN, CRNNConfig

__all__ = ["CRNN", "CRNNConfig", "build_crnn"]


def build_crnn(model_cfg) -> CRNN:
    """`model:` config section (dict or DictConfig) -> CRNN."""
    return CRNN(CRNNConfig.from_model_cfg(model_cfg))
