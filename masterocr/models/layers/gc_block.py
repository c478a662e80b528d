"""Multi-Aspect Global Context attention (MAGC), the "multi-aspect non-local" block of MASTER.

A GCNet-style block (Cao et al. 2019) extended to h aspects: the channels are split into h groups, each group
pools the feature map with its own spatial softmax attention, and the concatenated contexts are transformed
by a bottleneck (C -> C*r -> C with LayerNorm and ReLU) and fused back into every position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("add", "mul", "concat")


class MultiAspectGCBlock(nn.Module):
    """x (B, C, H, W) -> (B, C, H, W) with global context fused in.

    heads: number of aspects h (C must divide evenly). ratio: bottleneck ratio r (1/16 in MASTER).
    fusion: "add" (x + t), "mul" (x * sigmoid(t)) or "concat" (1x1 conv over [x, t], then LayerNorm over
    (C, H, W) and ReLU, as MASTER-pytorch). att_scale: divide the spatial logits by sqrt(C/h) when h > 1.
    """

    def __init__(self, channels: int, heads: int = 1, ratio: float = 1 / 16, fusion: str = "concat",
                 att_scale: bool = True):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"GC fusion {fusion!r}: choose one of {FUSIONS}")
        if heads < 1 or channels % heads:
            raise ValueError(f"GC block: channels={channels} must be divisible by heads={heads}")
        hidden = max(1, int(channels * ratio))
        self.channels, self.heads, self.fusion = channels, heads, fusion
        self.scale = 1.0 / math.sqrt(channels // heads) if (att_scale and heads > 1) else 1.0
        # One 1x1 conv per aspect, each over its own C/h channels: (B, C, H, W) -> (B, h, H, W) logits.
        self.mask_conv = nn.Conv2d(channels, heads, kernel_size=1, groups=heads)
        # Bottleneck transform of the pooled context; 1x1 convs on a 1x1 map are linear layers.
        self.transform = nn.Sequential(
            nn.Linear(channels, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        # concat fusion: a 1x1 conv over the 2C channels [x, context]; stored whole, applied in two parts.
        self.fuse = nn.Conv2d(2 * channels, channels, kernel_size=1) if fusion == "concat" else None

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-pooled context per aspect, concatenated: (B, C, H, W) -> (B, C)."""
        b, c, h, w = x.shape
        logits = self.mask_conv(x).reshape(b, self.heads, h * w) * self.scale  # (B, h, HW)
        attn = logits.softmax(dim=-1)
        feats = x.reshape(b, self.heads, c // self.heads, h * w)  # (B, h, C/h, HW)
        pooled = feats @ attn.unsqueeze(-1)  # (B, h, C/h, 1)
        return pooled.reshape(b, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform(self.context(x))  # (B, C)
        if self.fusion == "add":
            return x + t[:, :, None, None]
        if self.fusion == "mul":
            return x * torch.sigmoid(t)[:, :, None, None]
        # concat: conv([x, t broadcast]) == conv_x(x) + (W_t t + b), so t is never expanded to (H, W).
        c = self.channels
        out = F.conv2d(x, self.fuse.weight[:, :c]) + F.linear(t, self.fuse.weight[:, c:, 0, 0], self.fuse.bias)[
            :, :, None, None]
        # LayerNorm over (C, H, W) without affine parameters, then ReLU.
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        var = (out - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
        return F.relu((out - mean) * torch.rsqrt(var + 1e-5))
