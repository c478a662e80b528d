"""Multi-head scaled dot-product attention that can run incrementally against a key/value cache.

Separate query/key/value/output projections (d -> d each, with bias), as in MASTER. The projection of keys and
values is a method of its own (`project_kv`) so a decoder can project an image memory once per image and
append one new self-attention position per step, instead of recomputing whole sequences.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, length) additive float mask: 0 where key <= query, -inf above the diagonal."""
    full = torch.full((length, length), float("-inf"), device=device)
    return torch.triu(full, diagonal=1)


def step_mask(step: torch.Tensor, cache_len: int) -> torch.Tensor:
    """(1, cache_len) additive mask for a query at position `step` (tensor): keys at positions <= step are open.

    Built from tensors only, so an exported decode step has no data-dependent Python shapes.
    """
    positions = torch.arange(cache_len, device=step.device)
    blocked = positions.unsqueeze(0) > step.reshape(1, 1)  # (1, L)
    return torch.zeros(blocked.shape, device=step.device).masked_fill(blocked, float("-inf"))


class MultiHeadAttention(nn.Module):
    """Attention with `num_heads` heads over d_model channels; returns the output and optionally the weights."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, D) -> (B, h, T, D/h)
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of x (B, T, D): two (B, h, T, D/h) tensors."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None = None, need_weights: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, Tq, D) against projected key/value (B, h, Tk, D/h).

        mask: additive float, broadcastable to (B, h, Tq, Tk). Returns (B, Tq, D) and, when `need_weights`,
        the attention weights averaged over heads (B, Tq, Tk).
        """
        b, tq, d = query.shape
        q = self._split(self.q_proj(query))  # (B, h, Tq, D/h)
        if need_weights or tq == 1:
            # Explicit path: gives the weights, and for a single query (a decode step) it is several times
            # faster than the fused kernel on CPU, in bf16 especially. Softmax in float32 at least.
            scores = q @ key.transpose(-2, -1)  # (B, h, Tq, Tk)
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = scores + mask.to(scores.dtype)
            weights = scores.softmax(dim=-1)
            out = weights.to(value.dtype) @ value  # (B, h, Tq, D/h)
            mean_weights = weights.mean(dim=1) if need_weights else None  # (B, Tq, Tk)
        else:
            out = F.scaled_dot_product_attention(q, key, value, attn_mask=None if mask is None else mask.to(q.dtype))
            mean_weights = None
        out = out.transpose(1, 2).reshape(b, tq, d)  # (B, Tq, D)
        return self.out_proj(out), mean_weights

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Plain attention: query (B, Tq, D) over key_value (B, Tk, D) -> (B, Tq, D), weights or None."""
        key, value = self.project_kv(key_value)
        return self.attend(query, key, value, mask, need_weights)


class KVCache(NamedTuple):
    """Decoder state for incremental decoding, one tensor per decoder layer.

    self_k/self_v (B, h, L, D/h): self-attention keys/values, position t written at step t (L = max steps).
    memory_k/memory_v (B, h, N, D/h): cross-attention keys/values of the image memory, projected once.
    """

    self_k: list[torch.Tensor]
    self_v: list[torch.Tensor]
    memory_k: list[torch.Tensor]
    memory_v: list[torch.Tensor]

    def reorder(self, index: torch.Tensor, memory: bool = True) -> "KVCache":
        """Select/reorder batch rows (beam search): tensor -> tensor[index]. memory=False keeps the memory
        K/V as they are, which is right when rows only move among beams of the same image."""
        self_k = [t.index_select(0, index) for t in self.self_k]
        self_v = [t.index_select(0, index) for t in self.self_v]
        if not memory:
            return KVCache(self_k, self_v, self.memory_k, self.memory_v)
        return KVCache(self_k, self_v, [t.index_select(0, index) for t in self.memory_k],
                       [t.index_select(0, index) for t in self.memory_v])
