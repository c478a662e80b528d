"""CRNN-Seq2Seq-OCR (MindSpore model zoo): the attention encoder-decoder trained on FSNS street-name signs.

    image (B, 3, 128, 512): four 128x128 views of one sign side by side (FSNS's 150x600, resized)
      -> each view through one VGG (7 conv blocks, 6 pools, a 2x2 conv to 96 channels)   (B*4, 96, 1, 64)
      -> the views stacked along the channels, columns as positions                       (B, 64, 384)
      -> 2 x BiLSTM (hidden 128, each projected to 128)                                    (B, 64, 128)  "memory"
      -> GRU decoder (hidden 128, learned 128-d embedding, dropout 0.1), additive attention -> (B, T, classes)

It is TRBA's encoder-decoder (masterocr.models.trba) with other options, so this module only names the
seed's sizes. Two choices differ from the MindSpore code, both to keep one decoder for the family: its
attention scores are a linear layer over [embedding, hidden] with one output per encoder position (tied to
exactly 64 positions), here they are additive (Bahdanau) like TRBA's; and its extra ReLU(linear([embedding,
context])) layer before the GRU is left out (the GRU reads [context, embedding] directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..trba.model import TRBA, TRBAConfig

SEQ2SEQ_VGG = ("C64", "M", "C128", "MH", "B256", "C256", "MH", "B384", "C384", "MH", "B384", "C384", "MH",
               "B384", "C384", "MH", "R", "B96k2")


@dataclass
class Seq2SeqConfig(TRBAConfig):
    """The `model:` section of a seq2seq config; defaults are the MindSpore seed model's sizes."""

    charset: str = "94"  # the FSNS config names the `fsns` charset
    max_label_length: int = 37  # FSNS pads every label to 37 characters
    img_size: tuple[int, int] = (128, 512)
    in_channels: int = 3
    tps_fiducials: int = 0
    views: int = 4
    backbone: str = "vgg"
    vgg_layers: tuple[str, ...] = SEQ2SEQ_VGG
    feature_dropout: float = 0.5
    hidden_size: int = 128
    rnn_layers: int = 2
    decoder_cell: str = "gru"
    embed_dim: int = 128
    dropout: float = 0.1

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any] | Any, name: str = "seq2seq") -> "Seq2SeqConfig":
        return super().from_model_cfg(model_cfg, name)


class Seq2Seq(TRBA):
    """The CRNN-Seq2Seq-OCR model: TRBA's module built from a Seq2SeqConfig."""
