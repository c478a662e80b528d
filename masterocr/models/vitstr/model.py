"""ViTSTR: a Vision Transformer read out as a sequence (Atienza, ICDAR 2021, arXiv 2105.08582).

    image (B, C, 32, 128) -> ViT encoder with a class token (B, 1 + 128, D)
      -> linear head on tokens 1 .. L+1 (the class token is unused)            (B, L + 1, num_classes)

Output position t is character t + 1 of the label, or EOS: every position is read at once (the shared
decoder's parallel path, `decoding = "parallel"`), trained with cross-entropy (teacher forcing's loss; the
context tokens it is given are ignored, there is no decoder). Same ViT layers as PARSeq (layers/vit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ...charset import AttentionTokenizer
from ..layers.vit import ViTEncoder, vit_init
from ..common import config_from_model_cfg


@dataclass
class ViTSTRConfig:
    """The `model:` section of a ViTSTR config; defaults are ViTSTR-S on 32x128 (strhub's `vitstr`)."""

    charset: str = "94"
    max_label_length: int = 25
    img_size: tuple[int, int] = (32, 128)
    in_channels: int = 3
    patch_size: tuple[int, int] = (4, 8)
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any] | Any) -> "ViTSTRConfig":
        """Build from the `model:` section (dict or DictConfig); unknown keys are an error naming them."""
        return config_from_model_cfg(cls, model_cfg, "vitstr", ("img_size", "patch_size"))


class ViTSTR(nn.Module):
    """ViTSTR recogniser; see the module docstring."""

    decoding = "parallel"
    objective = "teacher_forcing"

    def __init__(self, config: ViTSTRConfig):
        super().__init__()
        self.config = config
        self.tokenizer = AttentionTokenizer(config.charset, config.max_label_length)
        self.img_size = tuple(config.img_size)
        self.in_channels = config.in_channels
        self.num_classes = self.tokenizer.num_classes
        self.max_steps = config.max_label_length + 1
        self.encoder = ViTEncoder(config.img_size, config.patch_size, config.in_channels, config.embed_dim,
                                  config.depth, config.num_heads, config.mlp_ratio, class_token=True)
        if self.encoder.num_patches < self.max_steps:
            raise ValueError(f"ViTSTR reads one character per patch token: {self.encoder.num_patches} patches "
                             f"cannot hold max_label_length + 1 = {self.max_steps} positions")
        self.head = nn.Linear(config.embed_dim, self.num_classes)
        vit_init(self.head)

    def feature_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        return self.encoder.grid

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> tokens (B, 1 + N, D), the class token first."""
        return self.encoder(images)

    def decode_parallel(self, memory: torch.Tensor, steps: int, need_weights: bool = False
                        ) -> tuple[torch.Tensor, None]:
        """memory (B, 1 + N, D) -> logits (B, steps, num_classes) from tokens 1 .. steps; no attention maps."""
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"{steps} positions: ViTSTR reads 1 to {self.max_steps} (max_label_length + 1)")
        return self.head(memory[:, 1 : steps + 1]), None

    def decode_full(self, memory: torch.Tensor, tokens: torch.Tensor, need_weights: bool = False
                    ) -> tuple[torch.Tensor, None]:
        """Teacher forcing's interface: logits (B, T, C) for T = tokens.shape[1] positions; the tokens
        themselves are not used (a parallel head has no context)."""
        return self.decode_parallel(memory, tokens.shape[1], need_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images -> logits (B, max_label_length + 1, num_classes)."""
        return self.decode_parallel(self.encode(images), self.max_steps)[0]


__all__ = ["ViTSTR", "ViTSTRConfig"]
