"""ResNet-31 style backbone used by MASTER (and SAR): output stride H/8 x W/4, with optional MAGC blocks.

Layout (default widths): conv 3->64, conv 64->128, maxpool 2x2;
stage 1: 1 BasicBlock ->256, conv3x3, maxpool 2x2; stage 2: 2 blocks ->256, conv3x3, maxpool (2, 1);
stage 3: 5 blocks ->512, conv3x3; stage 4: 3 blocks ->512, conv3x3. Every conv is followed by BN and ReLU.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .gc_block import MultiAspectGCBlock

STAGE_POOLS = ((2, 2), (2, 1), None, None)  # pooling after each stage's trailing conv


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, optional GC block, + shortcut (1x1 conv-BN when channels change), ReLU."""

    def __init__(self, cin: int, cout: int, gc: MultiAspectGCBlock | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.gc = gc
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                         if cin != cout else None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.gc is not None:
            out = self.gc(out)
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + residual)


class Stage(nn.Module):
    """Residual blocks, then conv3x3-BN-ReLU, then an optional max pool."""

    def __init__(self, blocks: list[BasicBlock], channels: int, pool: tuple[int, int] | None):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.conv = conv_bn_relu(channels, channels)
        self.pool = nn.MaxPool2d(pool, pool) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.blocks(x)))


class ResNet31(nn.Module):
    """(B, in_channels, H, W) -> (B, stage_channels[-1], H/8, W/4).

    gc_stages: per stage, whether it gets MAGC blocks; gc_every_block puts one in every block of those stages
    (as mmocr does) instead of only the first (as MASTER-pytorch does). gc: MultiAspectGCBlock arguments.
    """

    def __init__(self, in_channels: int = 3, stem_channels: Sequence[int] = (64, 128),
                 stage_channels: Sequence[int] = (256, 256, 512, 512), stage_blocks: Sequence[int] = (1, 2, 5, 3),
                 gc_stages: Sequence[bool] = (False, True, True, True), gc_every_block: bool = False,
                 gc: dict | None = None):
        super().__init__()
        if not (len(stage_channels) == len(stage_blocks) == len(gc_stages) == len(STAGE_POOLS)):
            raise ValueError("stage_channels, stage_blocks and gc_stages must each have 4 entries")
        if len(stem_channels) != 2:
            raise ValueError("stem_channels must have 2 entries")
        gc = dict(gc or {})
        self.stem = nn.Sequential(conv_bn_relu(in_channels, stem_channels[0]),
                                  conv_bn_relu(stem_channels[0], stem_channels[1]), nn.MaxPool2d(2, 2))
        stages, cin = [], stem_channels[1]
        for channels, count, use_gc, pool in zip(stage_channels, stage_blocks, gc_stages, STAGE_POOLS):
            blocks = []
            for i in range(count):
                with_gc = use_gc and (i == 0 or gc_every_block)
                blocks.append(BasicBlock(cin, channels, MultiAspectGCBlock(channels, **gc) if with_gc else None))
                cin = channels
            stages.append(Stage(blocks, channels, pool))
        self.stages = nn.ModuleList(stages)
        self.out_channels = stage_channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def output_size(height: int, width: int) -> tuple[int, int]:
        """Feature map size for an input size (max pools floor): 48x160 -> 6x40, 32x100 -> 4x25."""
        h, w = height // 2, width // 2
        for pool in STAGE_POOLS:
            if pool:
                h, w = h // pool[0], w // pool[1]
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C0, H/2, W/2)
        for stage in self.stages:
            x = stage(x)  # ... -> (B, C, H/8, W/4)
        return x


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing conv -> bn (eval statistics) in one op: w' = w * g / s, b' = beta + (b - mean) * g / s."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.to(memory_format=torch.channels_last) if conv.weight.is_contiguous(
        memory_format=torch.channels_last) and not conv.weight.is_contiguous() else fused


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d (in a Sequential or a BasicBlock) into the conv,
    in place, for inference: one pass over each feature map fewer. Eval mode only; the folded module has
    other state-dict keys, so save weights before folding, not after."""
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (it freezes the running statistics)")
    for child in list(module.modules()):
        if isinstance(child, BasicBlock):
            child.conv1, child.bn1 = _fold(child.conv1, child.bn1), nn.Identity()
            child.conv2, child.bn2 = _fold(child.conv2, child.bn2), nn.Identity()
        elif isinstance(child, nn.Sequential):
            names = list(child._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = child._modules[a], child._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    child._modules[a], child._modules[b] = _fold(conv, bn), nn.Identity()
    return module
