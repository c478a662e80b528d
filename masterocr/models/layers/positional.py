"""Fixed sinusoidal positional encodings (Vaswani et al. 2017), shared by image memory and target tokens."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table: even columns sin(pos / 10000^(2i/dim)), odd columns cos of the same angle."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table


class PositionalEncoding(nn.Module):
    """Adds a sinusoidal position to each element of a (B, T, D) sequence, then dropout.

    The table is a non-persistent buffer: it is rebuilt from the config, never stored in weights files.
    """

    def __init__(self, dim: int, max_len: int, dropout: float = 0.0):
        super().__init__()
        self.max_len = int(max_len)
        self.register_buffer("table", sinusoidal_table(self.max_len, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> x + table[:T] (B, T, D)."""
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence of {length} positions exceeds the positional table ({self.max_len})")
        return self.dropout(x + self.table[:length].to(x.dtype))

    def at(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One position given as a tensor (exportable decode step): x (B, 1, D) + table[position] -> (B, 1, D)."""
        return self.dropout(x + self.table.index_select(0, position.reshape(1)).to(x.dtype))
