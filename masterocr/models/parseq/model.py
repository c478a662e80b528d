"""PARSeq: Permuted Autoregressive Sequence models (Bautista & Atienza, ECCV 2022, arXiv 2207.06966).

    image (B, C, 32, 128)
      -> ViT encoder: 4x8 patches, 12 pre-LN blocks, LayerNorm        memory (B, 128, D)
      -> two-stream decoder (1 layer): position queries attend to the context (BOS + characters so far)
         through a mask, then to the memory
      -> LayerNorm + linear head                                       (B, T, num_classes)

The decoder's queries are learned position tokens; its keys/values are the context: BOS (the null context)
followed by character embeddings plus the position of the character they stand for. What a query may see is
an attention mask, so one network decodes autoregressively (causal mask), all at once (context = BOS only)
or in cloze form (every other character), and trains on many factorisation orders (permutation language
modelling, masterocr.training.plm). With more than one layer, the context ("content stream") is itself
updated by every layer but the last, under its own mask.

Pure nn.Module: no loss, no decoding loop. `decode_full` is the canonical (left-to-right) order over a whole
sequence; `init_cache` + `decode_step` compute one new position per step against cached keys/values (the
shared greedy and beam search in masterocr.decoding); `decode_parallel` and `refine` are the non-autoregressive
and cloze passes the shared decoder calls for `method="nar"` and `refine_iters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...charset import AttentionTokenizer
from ..layers.attention import KVCache, MultiHeadAttention, causal_mask, step_mask
from ..layers.vit import MLP, ViTEncoder, vit_init
from ..common import config_from_model_cfg

DECODER_LN_EPS = 1e-5  # PyTorch's default, as in strhub's decoder (the ViT encoder uses 1e-6)


@dataclass
class ParseqConfig:
    """The `model:` section of a PARSeq config; defaults are PARSeq-S (strhub's `parseq`)."""

    charset: str = "94"
    max_label_length: int = 25
    img_size: tuple[int, int] = (32, 128)
    in_channels: int = 3
    patch_size: tuple[int, int] = (4, 8)
    embed_dim: int = 384
    encoder_depth: int = 12
    encoder_heads: int = 6
    encoder_mlp_ratio: float = 4.0
    decoder_depth: int = 1
    decoder_heads: int = 12
    decoder_mlp_ratio: float = 4.0
    dropout: float = 0.1             # decoder only (the encoder has none, as in strhub)
    refine_iters: int = 1            # default cloze refinement passes after decoding (strhub's default)

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any] | Any) -> "ParseqConfig":
        """Build from the `model:` section (dict or DictConfig); unknown keys are an error naming them."""
        cfg = config_from_model_cfg(cls, model_cfg, "parseq", ("img_size", "patch_size"))
        if cfg.refine_iters < 0:
            raise ValueError(f"model.refine_iters={cfg.refine_iters} must be >= 0")
        return cfg


class TwoStreamLayer(nn.Module):
    """A pre-LN decoder layer run on two streams that share its weights (XLNet's two-stream attention).

    Both streams attend to the same keys/values: the LayerNorm'd content stream (norm_c), projected by
    `self_attn`. The query stream (norm_q) produces the outputs; the content stream is updated only when
    another layer follows.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.cross_attn = MultiHeadAttention(dim, num_heads)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        self.norm_q = nn.LayerNorm(dim, eps=DECODER_LN_EPS)
        self.norm_c = nn.LayerNorm(dim, eps=DECODER_LN_EPS)
        self.norm1 = nn.LayerNorm(dim, eps=DECODER_LN_EPS)  # before cross-attention
        self.norm2 = nn.LayerNorm(dim, eps=DECODER_LN_EPS)  # before the MLP
        self.dropout = nn.Dropout(dropout)

    def stream(self, x: torch.Tensor, x_norm: torch.Tensor, context_k: torch.Tensor, context_v: torch.Tensor,
               mask: torch.Tensor | None, memory_k: torch.Tensor, memory_v: torch.Tensor, need_weights: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One stream: x (B, T, D) with its normed form, context K/V (B, h, S, dh), additive mask broadcastable
        to (B, h, T, S) -> (B, T, D) and the head-averaged cross-attention (B, T, N) when asked."""
        x = x + self.dropout(self.self_attn.attend(x_norm, context_k, context_v, mask)[0])
        attn, weights = self.cross_attn.attend(self.norm1(x), memory_k, memory_v, None, need_weights)
        x = x + self.dropout(attn)
        return x + self.dropout(self.mlp(self.norm2(x))), weights


class PARSeq(nn.Module):
    """PARSeq recogniser. See the module docstring for the data flow."""

    objective = "plm"  # permutation language modelling (masterocr.training.plm)

    def __init__(self, config: ParseqConfig):
        super().__init__()
        self.config = config
        self.tokenizer = AttentionTokenizer(config.charset, config.max_label_length)
        self.img_size = tuple(config.img_size)
        self.in_channels = config.in_channels
        self.num_classes = self.tokenizer.num_classes  # EOS + characters (BOS and PAD are never predicted)
        self.max_steps = config.max_label_length + 1  # characters + EOS
        self.refine_iters = int(config.refine_iters)
        d = config.embed_dim

        self.encoder = ViTEncoder(config.img_size, config.patch_size, config.in_channels, d, config.encoder_depth,
                                  config.encoder_heads, config.encoder_mlp_ratio)
        self.decoder = nn.ModuleList([TwoStreamLayer(d, config.decoder_heads, config.decoder_mlp_ratio,
                                                     config.dropout) for _ in range(config.decoder_depth)])
        self.norm = nn.LayerNorm(d, eps=DECODER_LN_EPS)
        self.head = nn.Linear(d, self.num_classes)
        self.embed = nn.Embedding(self.tokenizer.num_tokens, d)  # EOS, characters, BOS, PAD
        self.pos_queries = nn.Parameter(torch.zeros(1, self.max_steps, d))  # one per output position
        self.dropout = nn.Dropout(config.dropout)
        self.embed_scale = math.sqrt(d)
        vit_init(self.decoder)
        vit_init(self.head)
        vit_init(self.embed)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    # ---- image -> memory ------------------------------------------------------------------------------

    def feature_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(H/ph, W/pw): the patch grid the memory covers (the encoder accepts its configured size only)."""
        height, width = height or self.img_size[0], width or self.img_size[1]
        if (height, width) != self.img_size:
            raise ValueError(f"PARSeq's ViT takes {self.img_size[0]}x{self.img_size[1]} images, not {height}x{width}")
        return self.encoder.grid

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> memory (B, N, D), N = H/ph * W/pw (row-major)."""
        return self.encoder(images)

    # ---- the decoder over whole sequences ------------------------------------------------------------------

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of the memory, per layer: [(B, h, N, dh) x 2]. Computed once per batch
        and shared by every pass over it (permutations in training, refinement iterations at inference)."""
        return [tuple(t.contiguous() for t in layer.cross_attn.project_kv(memory)) for layer in self.decoder]

    def embed_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Context tokens (B, S) [BOS, c1, c2, ...] -> (B, S, D): BOS alone (the null context), then each
        character's embedding plus the position query of the character it stands for."""
        x = self.embed(tokens) * self.embed_scale  # (B, S, D)
        positions = self.pos_queries[:, : tokens.shape[1] - 1].to(x.dtype)  # (1, S-1, D)
        return self.dropout(torch.cat([x[:, :1], x[:, 1:] + positions], dim=1))

    def decode_masked(self, memory_kv: Sequence[tuple[torch.Tensor, torch.Tensor]], tokens: torch.Tensor,
                      query_mask: torch.Tensor | None = None, content_mask: torch.Tensor | None = None,
                      padding_mask: torch.Tensor | None = None, num_queries: int | None = None,
                      need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder on a whole context at once.

        memory_kv: from `memory_kv(memory)`; tokens (B, S) context starting with BOS; query_mask (T, S) and
        content_mask (S, S): additive float masks (-inf: hidden) or None (all visible); padding_mask (B, S)
        bool, True for context positions no one may see; num_queries T (default S).
        -> logits (B, T, num_classes) for output positions 0..T-1, and when `need_weights` the last layer's
        head-averaged cross-attention (B, T, N).
        """
        b, s = tokens.shape
        t = s if num_queries is None else int(num_queries)
        content = self.embed_context(tokens)  # (B, S, D)
        query = self.dropout(self.pos_queries[:, :t].repeat(b, 1, 1).to(content.dtype))  # (B, T, D)
        pad = None
        if padding_mask is not None:  # (B, S) -> additive (B, 1, 1, S)
            pad = torch.zeros(padding_mask.shape, dtype=content.dtype, device=tokens.device)
            pad = pad.masked_fill(padding_mask, float("-inf"))[:, None, None, :]
        q_mask, c_mask = _combine(query_mask, pad), _combine(content_mask, pad)
        weights = None
        for i, (layer, (memory_k, memory_v)) in enumerate(zip(self.decoder, memory_kv)):
            content_norm = layer.norm_c(content)
            k, v = layer.self_attn.project_kv(content_norm)  # (B, h, S, dh)
            last = i == len(self.decoder) - 1
            new_query, weights = layer.stream(query, layer.norm_q(query), k, v, q_mask, memory_k, memory_v,
                                              need_weights and last)
            if not last:
                content = layer.stream(content, content_norm, k, v, c_mask, memory_k, memory_v)[0]
            query = new_query
        return self.head(self.norm(query)), weights

    def decode_full(self, memory: torch.Tensor, tokens: torch.Tensor, need_weights: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The canonical left-to-right order over a whole sequence (teacher forcing, the full-recompute
        reference): memory (B, N, D), tokens (B, T) starting with BOS -> logits (B, T, C), attention (B, T, N)."""
        mask = causal_mask(tokens.shape[1], tokens.device)  # (T, T): query t sees context 0..t
        return self.decode_masked(self.memory_kv(memory), tokens, mask, mask, need_weights=need_weights)

    def forward(self, images: torch.Tensor, targets_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing in the canonical order: images, targets_in (B, T) [BOS c1 ..] -> logits (B, T, C)."""
        return self.decode_full(self.encode(images), targets_in)[0]

    # ---- non-autoregressive and cloze passes (masterocr.decoding: method="nar", refine_iters) ----------

    def decode_parallel(self, memory: torch.Tensor, steps: int, need_weights: bool = False,
                        memory_kv: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All `steps` positions at once from the null context: memory (B, N, D) -> logits (B, steps, C),
        attention (B, steps, N) or None."""
        self._check_steps(steps)
        bos = torch.full((memory.shape[0], 1), self.tokenizer.bos_id, dtype=torch.long, device=memory.device)
        return self.decode_masked(memory_kv or self.memory_kv(memory), bos, num_queries=steps,
                                  need_weights=need_weights)

    def refine(self, memory: torch.Tensor, token_ids: torch.Tensor, need_weights: bool = False,
               memory_kv: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One cloze pass: every position is predicted again from all the other characters of the previous
        reading (up to its first EOS) and the image. token_ids (B, T) previous output (anything after a
        row's EOS is ignored) -> logits (B, T, C), attention (B, T, N) or None."""
        b, t = token_ids.shape
        self._check_steps(t)
        tok = self.tokenizer
        bos = torch.full((b, 1), tok.bos_id, dtype=torch.long, device=token_ids.device)
        context = torch.cat([bos, token_ids[:, :-1]], dim=1)  # (B, T): BOS + the previous reading
        ended = (context == tok.eos_id).long().cumsum(1) > 0  # the first EOS and everything after it
        padding = ended | (context == tok.pad_id)
        # Query t predicts character t+1, i.e. context position t+1: it sees every other position.
        own = torch.eye(t, dtype=torch.bool, device=token_ids.device).roll(1, dims=1)  # (T, T): (t, t+1)
        own[-1, 0] = False
        query_mask = torch.zeros((t, t), device=token_ids.device).masked_fill(own, float("-inf"))
        # With several layers, the context stream is masked the same way (strhub's refinement does so too).
        return self.decode_masked(memory_kv or self.memory_kv(memory), context, query_mask, query_mask,
                                  padding, need_weights=need_weights)

    def _check_steps(self, steps: int) -> None:
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"{steps} positions: PARSeq decodes 1 to {self.max_steps} (max_label_length + 1)")

    # ---- incremental decoding ---------------------------------------------------------------------------

    def init_cache(self, memory: torch.Tensor, max_steps: int | None = None) -> KVCache:
        """Project the memory's cross-attention keys/values once per layer and allocate the context cache.

        memory (B, N, D) -> KVCache with context K/V (B, h, L, dh) zeros, L = max_steps (default labels + EOS).
        """
        steps = self.max_steps if max_steps is None else int(max_steps)
        self._check_steps(steps)
        self_k, self_v, memory_k, memory_v = [], [], [], []
        for layer, (k, v) in zip(self.decoder, self.memory_kv(memory)):
            memory_k.append(k)
            memory_v.append(v)
            shape = (memory.shape[0], layer.self_attn.num_heads, steps, layer.self_attn.head_dim)
            self_k.append(k.new_zeros(shape))
            self_v.append(v.new_zeros(shape))
        return KVCache(self_k, self_v, memory_k, memory_v)

    def decode_step(self, tokens: torch.Tensor, position: torch.Tensor, cache: KVCache, need_weights: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One autoregressive step; only the new position is computed.

        tokens (B,): the context token at `position` (BOS at 0, then the character chosen at the step before);
        position: 0-dim long tensor. Appends that context token's keys/values to `cache` in place, then runs
        the query of `position` -> logits (B, num_classes) and the last layer's cross-attention (B, N) or None.
        """
        x = self.embed(tokens.unsqueeze(1)) * self.embed_scale  # (B, 1, D)
        index = position.reshape(1)
        # Context position p > 0 holds character p, which carries position query p - 1; BOS carries none.
        char_pos = self.pos_queries[0].index_select(0, (index - 1).clamp(min=0)).to(x.dtype)  # (1, D)
        content = x + char_pos * (index > 0).to(x.dtype)
        query = self.pos_queries[0].index_select(0, index).to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        mask = step_mask(position, cache.self_k[0].shape[2])  # (1, L): context positions <= position
        weights = None
        for i, layer in enumerate(self.decoder):
            content_norm = layer.norm_c(content)
            k, v = layer.self_attn.project_kv(content_norm)  # (B, h, 1, dh)
            cache.self_k[i].index_copy_(2, index, k)
            cache.self_v[i].index_copy_(2, index, v)
            last = i == len(self.decoder) - 1
            new_query, weights = layer.stream(query, layer.norm_q(query), cache.self_k[i], cache.self_v[i], mask,
                                              cache.memory_k[i], cache.memory_v[i], need_weights and last)
            if not last:
                content = layer.stream(content, content_norm, cache.self_k[i], cache.self_v[i], mask,
                                       cache.memory_k[i], cache.memory_v[i])[0]
            query = new_query
        logits = self.head(self.norm(query)).squeeze(1)  # (B, num_classes)
        return logits, (weights.squeeze(1) if weights is not None else None)


def _combine(mask: torch.Tensor | None, pad: torch.Tensor | None) -> torch.Tensor | None:
    """An additive (Tq, Tk) mask and an additive (B, 1, 1, Tk) padding mask -> one mask, or None."""
    if mask is None:
        return pad
    if pad is None:
        return mask
    return mask.to(pad.dtype) + pad  # (B, 1, Tq, Tk)


__all__ = ["PARSeq", "ParseqConfig", "TwoStreamLayer"]
