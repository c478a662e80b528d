"""MASTER model: config dataclass and the exportable nn.Module."""

from .model import KVCache, Master, MasterConfig

__all__ = ["KVCache", "Master", "MasterConfig", "build_master"]


def build_master(model_cfg) -> Master:
    """`model:` config section (dict or DictConfig) -> Master."""
    return Master(MasterConfig.from_model_cfg(model_cfg))
