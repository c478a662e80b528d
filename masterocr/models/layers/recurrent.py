"""Recurrent blocks of CRNN, TRBA and the seq2seq model: the BiLSTM sequence model and an attention RNN decoder.

AttentionRNNDecoder is the additive-attention (Bahdanau) decoder of clovaai's TRBA (LSTM cell, one-hot
input) and, with a GRU cell and a learned embedding, of the CRNN-Seq2Seq-OCR model. Each step attends from
the previous hidden state over the encoder memory, feeds [context, previous token] to the cell and
classifies the new hidden state:

    e_i = v . tanh(W m_i + U h_{t-1} + b);  a = softmax(e);  c = sum_i a_i m_i
    h_t = cell([c, x(y_{t-1})], h_{t-1});   logits_t = head(h_t)

Its cache (RNNCache) holds the hidden state and the memory with its attention projection W m, computed once
per image; `reorder` selects rows for beam search and for dropping finished rows, as the Transformer K/V
cache does, so masterocr.decoding's greedy and beam search run these decoders unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CELLS = ("lstm", "gru")


class BiLSTM(nn.Module):
    """(B, T, input_size) -> (B, T, output_size): a bidirectional LSTM and a linear map of both directions."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, 2 * hidden)
        return self.linear(out)


def bilstm_stack(input_size: int, hidden_size: int, layers: int) -> nn.Sequential:
    """`layers` BiLSTMs (each projecting back to hidden_size); an empty stack passes features through."""
    return nn.Sequential(*[BiLSTM(input_size if i == 0 else hidden_size, hidden_size, hidden_size)
                           for i in range(layers)])


@dataclass
class RNNCache:
    """Decoder state for incremental decoding.

    hidden (B, H): the cell's hidden state after the last fed token; cell (B, H) for an LSTM, (B, 0) for a GRU.
    memory (B, N, D): the encoder memory; memory_proj (B, N, H): its attention projection W m, computed once.
    decode_step replaces hidden and cell; the memory is never written.
    """

    hidden: torch.Tensor
    cell: torch.Tensor
    memory: torch.Tensor
    memory_proj: torch.Tensor

    def reorder(self, index: torch.Tensor, memory: bool = True) -> "RNNCache":
        """Select/reorder batch rows: tensor -> tensor[index]. memory=False keeps the memory tensors as they
        are, which is right when rows only move among beams of the same image."""
        hidden, cell = self.hidden.index_select(0, index), self.cell.index_select(0, index)
        if not memory:
            return RNNCache(hidden, cell, self.memory, self.memory_proj)
        return RNNCache(hidden, cell, self.memory.index_select(0, index), self.memory_proj.index_select(0, index))


class AttentionRNNDecoder(nn.Module):
    """Additive-attention RNN decoder over a memory (B, N, memory_dim); see the module docstring.

    num_tokens: input vocabulary (EOS, characters, BOS, PAD); num_classes: outputs (EOS, characters).
    embed_dim 0 feeds the previous token one-hot (clovaai); > 0 through a learned embedding with `dropout`.
    """

    def __init__(self, memory_dim: int, hidden_size: int, num_tokens: int, num_classes: int, cell: str = "lstm",
                 embed_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"decoder cell {cell!r}: choose one of {CELLS}")
        self.cell_type = cell
        self.hidden_size = int(hidden_size)
        self.num_tokens = int(num_tokens)
        self.attn_memory = nn.Linear(memory_dim, hidden_size, bias=False)  # W
        self.attn_hidden = nn.Linear(hidden_size, hidden_size)  # U, b
        self.attn_score = nn.Linear(hidden_size, 1, bias=False)  # v
        self.embed = nn.Embedding(num_tokens, embed_dim) if embed_dim else None
        self.dropout = nn.Dropout(dropout)
        cell_input = memory_dim + (embed_dim or num_tokens)
        self.rnn = nn.LSTMCell(cell_input, hidden_size) if cell == "lstm" else nn.GRUCell(cell_input, hidden_size)
        self.head = nn.Linear(hidden_size, num_classes)

    def init_cache(self, memory: torch.Tensor) -> RNNCache:
        """memory (B, N, D) -> RNNCache with zero states and the memory's attention projection (B, N, H)."""
        b = memory.shape[0]
        hidden = memory.new_zeros(b, self.hidden_size)
        cell = memory.new_zeros(b, self.hidden_size if self.cell_type == "lstm" else 0)
        return RNNCache(hidden, cell, memory, self.attn_memory(memory))

    def _token_input(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            return F.one_hot(tokens, self.num_tokens).to(like.dtype)  # (B, num_tokens)
        return self.dropout(self.embed(tokens)).to(like.dtype)  # (B, E)

    def decode_step(self, tokens: torch.Tensor, cache: RNNCache, need_weights: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed tokens (B,) (BOS first); updates cache.hidden/cell. -> logits (B, num_classes) for the next
        token, and the attention (B, N) this step read the memory with (None unless need_weights)."""
        query = self.attn_hidden(cache.hidden).unsqueeze(1)  # (B, 1, H)
        scores = self.attn_score(torch.tanh(cache.memory_proj + query)).squeeze(2)  # (B, N)
        weights = scores.float().softmax(-1).to(cache.memory.dtype)  # (B, N)
        context = torch.bmm(weights.unsqueeze(1), cache.memory).squeeze(1)  # (B, D)
        x = torch.cat([context, self._token_input(tokens, context)], 1)  # (B, D + E)
        if self.cell_type == "lstm":
            hidden, cell = self.rnn(x, (cache.hidden.to(x.dtype), cache.cell.to(x.dtype)))
        else:
            hidden = self.rnn(x, cache.hidden.to(x.dtype))
            cell = cache.cell
        cache.hidden, cache.cell = hidden, cell
        return self.head(hidden), (weights if need_weights else None)

    def decode_full(self, memory: torch.Tensor, tokens: torch.Tensor, need_weights: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing / full recompute: memory (B, N, D), tokens (B, T) starting with BOS -> logits
        (B, T, num_classes) and attention (B, T, N) when need_weights. The recurrence runs step by step."""
        cache = self.init_cache(memory)
        logits, weights = [], []
        for t in range(tokens.shape[1]):
            step_logits, step_weights = self.decode_step(tokens[:, t], cache, need_weights)
            logits.append(step_logits)
            weights.append(step_weights)
        return torch.stack(logits, 1), (torch.stack(weights, 1) if need_weights else None)
