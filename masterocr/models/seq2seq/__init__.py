"""CRNN-Seq2Seq-OCR: config dataclass and the exportable nn.Module (TRBA's, with the seed model's options)."""

from .model import Seq2Seq, Seq2SeqConfig

__all__ = ["Seq2Seq", "Seq2SeqConfig", "build_seq2seq"]


def build_seq2seq(model_cfg) -> Seq2Seq:
    """`model:` config section (dict or DictConfig) -> Seq2Seq."""
    return Seq2Seq(Seq2SeqConfig.from_model_cfg(model_cfg))
