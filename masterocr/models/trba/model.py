"""TRBA (Baek et al., ICCV 2019, "What is wrong with scene text recognition model comparisons"): TPS
rectification, a ResNet feature extractor, BiLSTMs and an attention LSTM decoder.

    image (B, C, 32, 128)
      -> TPS: 20 fiducial points, rectified to the same size       (B, C, 32, 128)
      -> clovaai ResNet                                             (B, 512, 1, 33)
      -> mean over the height, columns as positions                 (B, 33, 512)
      -> 2 x BiLSTM (each projected to hidden)                      (B, 33, 256)    "memory"
      -> additive-attention LSTM decoder, one-hot previous token    (B, T, num_classes)

The defaults are strhub's `trba` (32x128 RGB, 94 characters). The same module, with other options, is the
CRNN-Seq2Seq-OCR model (masterocr.models.seq2seq): `views` splits a multi-view image (FSNS: four views of one
sign side by side) into its views, runs the CNN on each and stacks their features along the channels, so
position i of the memory is column i of every view; `decoder_cell: gru` with a learned `embed_dim`.

Pure nn.Module. `forward` is teacher forcing; inference runs `encode` once, `init_cache` once (projects the
memory for attention) and `decode_step` per position (masterocr.decoding: greedy and beam search).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ...charset import AttentionTokenizer
from ..common import build_backbone, config_from_model_cfg
from ..crnn.model import CLOVA_VGG
from ..layers import TPS, AttentionRNNDecoder, RNNCache, bilstm_stack


@dataclass
class TRBAConfig:
    """The `model:` section of a TRBA config; defaults are strhub's trba."""

    charset: str = "94"
    max_label_length: int = 25
    img_size: tuple[int, int] = (32, 128)
    in_channels: int = 3
    tps_fiducials: int = 20  # 0: no rectification
    views: int = 1  # > 1: the image is that many views side by side (FSNS: 4)
    backbone: str = "resnet"  # resnet (clovaai's) | vgg
    resnet_channels: int = 512
    vgg_layers: tuple[str, ...] = CLOVA_VGG
    feature_dropout: float = 0.0  # on the CNN features (the seq2seq model's 0.5)
    hidden_size: int = 256
    rnn_layers: int = 2
    decoder_cell: str = "lstm"  # lstm | gru
    embed_dim: int = 0  # 0: one-hot previous token (clovaai); > 0: learned embedding
    dropout: float = 0.0  # on the embedding

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any] | Any, name: str = "trba") -> "TRBAConfig":
        return config_from_model_cfg(cls, model_cfg, name)


class TRBA(nn.Module):
    """Attention-RNN recogniser: [TPS] -> CNN -> BiLSTMs -> attention RNN decoder (see the module docstring)."""

    def __init__(self, config: TRBAConfig):
        super().__init__()
        self.config = config
        self.tokenizer = AttentionTokenizer(config.charset, config.max_label_length)
        self.img_size = tuple(config.img_size)
        self.in_channels = config.in_channels
        self.num_classes = self.tokenizer.num_classes  # EOS + characters
        self.max_steps = config.max_label_length + 1  # characters + EOS
        self.views = int(config.views)
        if self.views < 1 or self.img_size[1] % self.views:
            raise ValueError(f"model.views={config.views} must divide the image width {self.img_size[1]}")
        self.tps = (TPS(config.tps_fiducials, config.in_channels, self.img_size) if config.tps_fiducials else None)
        self.backbone = build_backbone(config.backbone, config.in_channels, config.vgg_layers, config.resnet_channels)
        self.feature_dropout = nn.Dropout(config.feature_dropout)
        features = self.backbone.out_channels * self.views
        self.sequence = bilstm_stack(features, config.hidden_size, config.rnn_layers)
        self.memory_dim = config.hidden_size if config.rnn_layers else features
        self.decoder = AttentionRNNDecoder(self.memory_dim, config.hidden_size, self.tokenizer.num_tokens,
                                           self.num_classes, config.decoder_cell, config.embed_dim, config.dropout)

    # ---- image -> memory ------------------------------------------------------------------------------

    def feature_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(Hf, Wf) = (1, memory positions) for an input size (default: the configured img_size)."""
        width = width or self.img_size[1]
        return 1, self.backbone.output_size(height or self.img_size[0], width // self.views)[1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> memory (B, N, memory_dim), N = feature_size(H, W)[1]."""
        if self.tps is not None:
            images = self.tps(images)  # (B, C, H, W) rectified
        b, c, h, w = images.shape
        if self.views > 1:  # (B, C, H, V*w) -> (B*V, C, H, w): every view through the same CNN
            images = images.reshape(b, c, h, self.views, w // self.views).permute(0, 3, 1, 2, 4)
            images = images.reshape(b * self.views, c, h, w // self.views)
        feats = self.feature_dropout(self.backbone(images))  # (B*V, C', Hf, Wf)
        columns = feats.mean(2)  # (B*V, C', Wf): the height averaged away
        columns = columns.reshape(b, -1, columns.shape[-1])  # (B, V*C', Wf): views stacked along the channels
        return self.sequence(columns.transpose(1, 2))  # (B, Wf, memory_dim)

    # ---- decoding interface (masterocr.decoding) ---------------------------------------------------------

    def decode_full(self, memory: torch.Tensor, tokens: torch.Tensor, need_weights: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """memory (B, N, D), tokens (B, T) starting with BOS -> logits (B, T, num_classes), attention (B, T, N)."""
        return self.decoder.decode_full(memory, tokens, need_weights)

    def forward(self, images: torch.Tensor, targets_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: images (B, C, H, W), targets_in (B, T) [BOS c1 ..] -> logits (B, T, num_classes)."""
        return self.decode_full(self.encode(images), targets_in)[0]

    def init_cache(self, memory: torch.Tensor, max_steps: int | None = None) -> RNNCache:
        """Zero states and the memory's attention projection, once per image (max_steps: unused, a recurrent
        state does not grow)."""
        return self.decoder.init_cache(memory)

    def decode_step(self, tokens: torch.Tensor, position: torch.Tensor, cache: RNNCache, need_weights: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens (B,) at `position` -> logits (B, num_classes) for the next token, attention (B, N); updates
        the cache's state in place (the position is implicit in the recurrent state)."""
        return self.decoder.decode_step(tokens, cache, need_weights)
