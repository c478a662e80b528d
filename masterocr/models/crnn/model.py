"""CRNN (Shi et al., TPAMI 2017, arXiv 1507.05717): a VGG-style CNN, a stack of BiLSTMs and a CTC head.

    image (B, C, 32, 100)
      -> VGG                                        (B, 512, 1, 24)
      -> mean over the height, columns as frames    (B, 24, 512)
      -> 2 x BiLSTM (each projected to hidden)      (B, 24, 256)
      -> linear head                                (B, 24, num_classes)   blank + characters

The defaults are clovaai's None-VGG-BiLSTM-CTC (the benchmark's CRNN, 8.5 M parameters for 94 characters);
the paper's own CNN (as in crnn.pytorch and strhub) and EasyOCR's english_g2 are other layer lists for the
same module (masterocr.models.layers.vgg). Any input width works: frames follow the width. Pure nn.Module:
`forward` returns frame logits; masterocr.decoding reads them best-path and the training objective is CTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ...charset import CTCTokenizer
from ..common import build_backbone, config_from_model_cfg
from ..layers import bilstm_stack

CLOVA_VGG = ("C64", "M", "C128", "M", "C256", "C256", "MH", "B512", "B512", "MH", "C512k2")


@dataclass
class CRNNConfig:
    """The `model:` section of a CRNN config; defaults are clovaai's None-VGG-BiLSTM-CTC."""

    charset: str = "94"
    max_label_length: int = 25
    img_size: tuple[int, int] = (32, 100)
    in_channels: int = 1
    backbone: str = "vgg"  # vgg | resnet (clovaai's ResNet)
    vgg_layers: tuple[str, ...] = CLOVA_VGG
    resnet_channels: int = 512
    hidden_size: int = 256
    rnn_layers: int = 2  # 0: the head reads the CNN features directly

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any] | Any) -> "CRNNConfig":
        return config_from_model_cfg(cls, model_cfg, "crnn")


class CRNN(nn.Module):
    """CRNN recogniser; see the module docstring for the data flow."""

    decoding = "ctc"
    objective = "ctc"

    def __init__(self, config: CRNNConfig):
        super().__init__()
        self.config = config
        self.tokenizer = CTCTokenizer(config.charset, config.max_label_length)
        self.img_size = tuple(config.img_size)
        self.in_channels = config.in_channels
        self.num_classes = self.tokenizer.num_classes  # blank + characters
        self.backbone = build_backbone(config.backbone, config.in_channels, config.vgg_layers, config.resnet_channels)
        self.sequence = bilstm_stack(self.backbone.out_channels, config.hidden_size, config.rnn_layers)
        self.head = nn.Linear(config.hidden_size if config.rnn_layers else self.backbone.out_channels,
                              self.num_classes)

    def feature_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(Hf, Wf) of the CNN's feature map for an input size; Wf is the number of CTC frames."""
        return self.backbone.output_size(height or self.img_size[0], width or self.img_size[1])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> frame features (B, Wf, hidden)."""
        feats = self.backbone(images)  # (B, C', Hf, Wf)
        frames = feats.mean(2).transpose(1, 2)  # (B, Wf, C'): the height averaged away, one frame per column
        return self.sequence(frames)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> frame logits (B, Wf, num_classes), class 0 the CTC blank."""
        return self.head(self.encode(images))
