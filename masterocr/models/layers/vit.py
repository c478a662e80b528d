"""Vision Transformer encoder blocks (Dosovitskiy et al. 2021), as PARSeq and ViTSTR use them.

Patch embedding (a strided convolution), learned absolute positions, pre-LN Transformer blocks with a fused
query/key/value projection and a GELU MLP, and a final LayerNorm. The parameter names follow timm's
VisionTransformer (patch_embed.proj, pos_embed, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2},
norm), so weights trained with timm-based code map onto it one to one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

VIT_LN_EPS = 1e-6  # timm's ViT LayerNorm epsilon


def vit_init(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear and Embedding weights, zero biases: the usual ViT initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/ph * W/pw, D): non-overlapping patches, linearly projected, row-major order."""

    def __init__(self, img_size: Sequence[int], patch_size: Sequence[int], in_channels: int, embed_dim: int):
        super().__init__()
        (h, w), (ph, pw) = img_size, patch_size
        if h % ph or w % pw:
            raise ValueError(f"img_size {list(img_size)} is not a multiple of patch_size {list(patch_size)}")
        self.img_size, self.patch_size = (int(h), int(w)), (int(ph), int(pw))
        self.grid = (h // ph, w // pw)
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            h, w = self.img_size
            raise ValueError(f"images are {x.shape[-2]}x{x.shape[-1]}, this ViT was built for {h}x{w} "
                             f"(its position table is fixed)")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/ph, W/pw) -> (B, N, D)


class ViTAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (the ViT layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, N, dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """Linear(d, r*d) -> GELU -> dropout -> Linear(r*d, d)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class ViTBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.attn = ViTAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """images (B, C, H, W) -> tokens (B, [1 +] H/ph * W/pw, D), LayerNorm'd.

    class_token: prepend a learned token (ViTSTR reads its characters from the first tokens; PARSeq has none).
    """

    def __init__(self, img_size: Sequence[int], patch_size: Sequence[int], in_channels: int = 3,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 class_token: bool = False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        self.num_patches = self.patch_embed.grid[0] * self.patch_embed.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + int(class_token), embed_dim))
        self.blocks = nn.ModuleList([ViTBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=VIT_LN_EPS)
        vit_init(self.blocks)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    @property
    def grid(self) -> tuple[int, int]:
        """(H/ph, W/pw): the patch grid, i.e. the memory's feature map."""
        return self.patch_embed.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + N, D)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
