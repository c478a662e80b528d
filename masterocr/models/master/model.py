"""MASTER: Multi-Aspect non-local network for scene TExt Recognition (Lu et al. 2021, arXiv 1910.02562).

    image (B, C, 48, 160)
      -> ResNet-31 with Multi-Aspect GC blocks            (B, 512, 6, 40)
      -> flatten row-major + sinusoidal positions          (B, 240, 512)   "memory"
      -> [optional Transformer encoder, off by default]
      -> 3 pre-LN Transformer decoder layers over the target, cross-attending to the memory
      -> LayerNorm + linear head                          (B, T, num_classes)

Pure nn.Module: no loss, no decoding loop. `forward` is teacher forcing with a causal mask (training and the
full-recompute reference); inference runs `encode` once, `init_cache` once, then `decode_step` per position
(see masterocr.decoding), which computes only the new position against cached keys and values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ...charset import AttentionTokenizer
from ..common import config_from_model_cfg
from ..layers import DecoderLayer, EncoderLayer, KVCache, PositionalEncoding, ResNet31, causal_mask, step_mask
from ..layers.transformer import LN_EPS

MEMORY_POSITIONS = 4096  # longest flattened feature map the memory positional table covers


@dataclass
class MasterConfig:
    """The `model:` section of a MASTER config; defaults are the paper / MASTER-pytorch model."""

    charset: str = "94"
    max_label_length: int = 25
    img_size: tuple[int, int] = (48, 160)
    in_channels: int = 3
    # ResNet-31 backbone
    stem_channels: tuple[int, ...] = (64, 128)
    stage_channels: tuple[int, ...] = (256, 256, 512, 512)
    stage_blocks: tuple[int, ...] = (1, 2, 5, 3)
    # Multi-aspect GC attention: aspects, bottleneck ratio, fusion, which stages, first block or every block
    gc_heads: int = 1
    gc_ratio: float = 0.0625
    gc_fusion: str = "concat"
    gc_att_scale: bool = True
    gc_stages: tuple[bool, ...] = (False, True, True, True)
    gc_every_block: bool = False
    # Transformer
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    encoder_layers: int = 0
    decoder_layers: int = 3
    dropout: float = 0.2

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any] | Any) -> "MasterConfig":
        """Build from the `model:` section (dict or DictConfig); unknown keys are an error naming them."""
        return config_from_model_cfg(cls, model_cfg, "master")


class Master(nn.Module):
    """MASTER recogniser. See the module docstring for the data flow."""

    def __init__(self, config: MasterConfig):
        super().__init__()
        self.config = config
        self.tokenizer = AttentionTokenizer(config.charset, config.max_label_length)
        self.img_size = tuple(config.img_size)
        self.in_channels = config.in_channels
        self.num_classes = self.tokenizer.num_classes  # EOS + characters
        self.max_steps = config.max_label_length + 1  # characters + EOS
        d = config.d_model

        # Image -> memory.
        self.backbone = ResNet31(
            config.in_channels, config.stem_channels, config.stage_channels, config.stage_blocks,
            config.gc_stages, config.gc_every_block,
            gc=dict(heads=config.gc_heads, ratio=config.gc_ratio, fusion=config.gc_fusion,
                    att_scale=config.gc_att_scale))
        # A projection exists only when the CNN width differs from d_model (never in the paper's config).
        self.memory_proj = nn.Linear(self.backbone.out_channels, d) if self.backbone.out_channels != d else None
        self.memory_pos = PositionalEncoding(d, MEMORY_POSITIONS, config.dropout)
        # Optional Transformer encoder over the memory; with 0 layers no weights are allocated at all.
        self.encoder = nn.ModuleList(
            [EncoderLayer(d, config.num_heads, config.ffn_dim, config.dropout) for _ in range(config.encoder_layers)])
        self.encoder_norm = nn.LayerNorm(d, eps=LN_EPS) if config.encoder_layers else None

        # Target tokens -> logits.
        self.embed = nn.Embedding(self.tokenizer.num_tokens, d)  # EOS, chars, BOS, PAD
        self.target_pos = PositionalEncoding(d, self.max_steps + 1, config.dropout)
        self.decoder = nn.ModuleList(
            [DecoderLayer(d, config.num_heads, config.ffn_dim, config.dropout) for _ in range(config.decoder_layers)])
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.head = nn.Linear(d, self.num_classes)
        self.embed_scale = math.sqrt(d)

        for module in [self.memory_proj, self.encoder, self.embed, self.decoder, self.head]:
            for p in module.parameters() if module is not None else ():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    # ---- image -> memory ------------------------------------------------------------------------------

    def feature_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(Hf, Wf) of the feature map for an input size (default: the configured img_size)."""
        return ResNet31.output_size(height or self.img_size[0], width or self.img_size[1])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> memory (B, N, D), N = H/8 * W/4 (row-major)."""
        feats = self.backbone(images)  # (B, C', Hf, Wf)
        b, c, h, w = feats.shape
        memory = feats.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, N, C') row-major; a view if channels_last
        if self.memory_proj is not None:
            memory = self.memory_proj(memory)  # (B, N, D)
        memory = self.memory_pos(memory)
        if self.encoder_norm is not None:
            for layer in self.encoder:
                memory = layer(memory)
            memory = self.encoder_norm(memory)
        return memory

    # ---- memory + target sequence -> logits (teacher forcing / full recompute) -------------------------

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> scaled embeddings + positions (B, T, D)."""
        return self.target_pos(self.embed(tokens) * self.embed_scale)

    def decode_full(self, memory: torch.Tensor, tokens: torch.Tensor, need_weights: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Whole target sequence at once with a causal mask; recomputes everything, memory projections included.

        memory (B, N, D), tokens (B, T) starting with BOS -> logits (B, T, num_classes) and, when
        `need_weights`, the last layer's head-averaged cross-attention (B, T, N).
        """
        x = self.embed_tokens(tokens)  # (B, T, D)
        mask = causal_mask(tokens.shape[1], tokens.device)  # (T, T)
        weights = None
        for i, layer in enumerate(self.decoder):
            memory_k, memory_v = layer.cross_attn.project_kv(memory)  # (B, h, N, D/h)
            last = i == len(self.decoder) - 1
            x, weights = layer(x, memory_k, memory_v, mask, need_weights and last)
        return self.head(self.norm(x)), weights

    def forward(self, images: torch.Tensor, targets_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: images (B, C, H, W), targets_in (B, T) [BOS c1 .. ] -> logits (B, T, num_classes)."""
        return self.decode_full(self.encode(images), targets_in)[0]

    # ---- incremental decoding ---------------------------------------------------------------------------

    def init_cache(self, memory: torch.Tensor, max_steps: int | None = None) -> KVCache:
        """Project the memory's cross-attention keys/values once per layer and allocate the self-attention cache.

        memory (B, N, D) -> KVCache with self K/V (B, h, L, D/h) zeros, L = max_steps (default: labels + EOS).
        """
        steps = self.max_steps if max_steps is None else int(max_steps)
        if steps > self.target_pos.max_len:
            raise ValueError(f"max_steps={steps} exceeds the {self.target_pos.max_len} target positions")
        b = memory.shape[0]
        self_k, self_v, memory_k, memory_v = [], [], [], []
        for layer in self.decoder:
            k, v = layer.cross_attn.project_kv(memory)  # (B, h, N, D/h)
            memory_k.append(k.contiguous())  # laid out once here, not copied by attention at every step
            memory_v.append(v.contiguous())
            shape = (b, layer.self_attn.num_heads, steps, layer.self_attn.head_dim)
            self_k.append(k.new_zeros(shape))
            self_v.append(v.new_zeros(shape))
        return KVCache(self_k, self_v, memory_k, memory_v)

    def decode_step(self, tokens: torch.Tensor, position: torch.Tensor, cache: KVCache, need_weights: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decoding step; only the new position is computed.

        tokens (B,) the token at `position` (BOS at 0); position: 0-dim long tensor. Writes this position's
        self-attention K/V into `cache` in place. -> logits (B, num_classes) for the next token and the last
        layer's head-averaged cross-attention (B, N) (None unless `need_weights`).
        """
        x = self.target_pos.at(self.embed(tokens.unsqueeze(1)) * self.embed_scale, position)  # (B, 1, D)
        mask = step_mask(position, cache.self_k[0].shape[2])  # (1, L)
        weights = None
        for i, layer in enumerate(self.decoder):
            last = i == len(self.decoder) - 1
            x, weights = layer.step(x, position, cache.self_k[i], cache.self_v[i], cache.memory_k[i],
                                    cache.memory_v[i], mask, need_weights and last)
        logits = self.head(self.norm(x)).squeeze(1)  # (B, num_classes)
        return logits, (weights.squeeze(1) if weights is not None else None)
