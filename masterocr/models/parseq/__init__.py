"""PARSeq model: config dataclass and the exportable nn.Module."""

from .model import PARSeq, ParseqConfig

__all__ = ["PARSeq", "ParseqConfig", "build_parseq"]


def build_parseq(model_cfg) -> PARSeq:
    """`model:` config section (dict or DictConfig) -> PARSeq."""
    return PARSeq(ParseqConfig.from_model_cfg(model_cfg))
