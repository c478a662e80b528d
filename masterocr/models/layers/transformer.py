"""Pre-LayerNorm Transformer layers whose decoder can run one position at a time against a K/V cache."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention

LN_EPS = 1e-6


class FeedForward(nn.Module):
    """Position-wise Linear(d, ff) -> ReLU -> dropout -> Linear(ff, d)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """x + attn(LN(x)); x + ffn(LN(x)). Full (unmasked) self-attention over the image memory."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, h)[0])
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer: causal self-attention, cross-attention to the memory, feed-forward.

    `forward` runs a whole target sequence (training, full-recompute reference); `step` runs one new position,
    writing its self-attention key/value into a preallocated cache at `position`.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.norm3 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def _cross_and_ffn(self, x: torch.Tensor, memory_k: torch.Tensor, memory_v: torch.Tensor, need_weights: bool
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.cross_attn.attend(self.norm2(x), memory_k, memory_v, None, need_weights)
        x = x + self.dropout(attn)
        return x + self.dropout(self.ffn(self.norm3(x))), weights

    def forward(self, x: torch.Tensor, memory_k: torch.Tensor, memory_v: torch.Tensor, mask: torch.Tensor,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D), memory K/V (B, h, N, D/h), mask (T, T) additive causal -> (B, T, D), (B, T, N) or None."""
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, mask)[0])
        return self._cross_and_ffn(x, memory_k, memory_v, need_weights)

    def step(self, x: torch.Tensor, position: torch.Tensor, self_k: torch.Tensor, self_v: torch.Tensor,
             memory_k: torch.Tensor, memory_v: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One position. x (B, 1, D); self_k/self_v (B, h, L, D/h) cache, written in place at `position`;
        mask (1, L) opens cache positions <= position. -> (B, 1, D), cross-attention (B, 1, N) or None."""
        h = self.norm1(x)
        k, v = self.self_attn.project_kv(h)  # (B, h, 1, D/h)
        self_k.index_copy_(2, position.reshape(1), k)
        self_v.index_copy_(2, position.reshape(1), v)
        x = x + self.dropout(self.self_attn.attend(h, self_k, self_v, mask)[0])
        return self._cross_and_ffn(x, memory_k, memory_v, need_weights)
