"""The ResNet feature extractor of clovaai's benchmark (TRBA; from FAN, Cheng et al. 2017), as strhub ships it.

Widths follow one output width C (512): stem C/16, C/8; stages C/4, C/2, C, C with 1, 2, 5, 3 basic blocks.

    stem 3x3 conv x2, max pool 2x2                         (B, C/8, H/2, W/2)
    stage 1: blocks, 3x3 conv, max pool 2x2                (B, C/4, H/4, W/4)
    stage 2: blocks, 3x3 conv, max pool 2x2 s(2,1) p(0,1)  (B, C/2, H/8, W/4 + 1)
    stage 3: blocks, 3x3 conv                              (B, C, H/8, W/4 + 1)
    stage 4: blocks, 2x2 conv s(2,1) p(0,1), 2x2 conv      (B, C, H/16 - 1, W/4 + 1)
32x100 -> 1 x 26, 32x128 -> 1 x 33. Every conv is followed by BatchNorm and ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet31 import BasicBlock, conv_bn_relu
from .vgg import init_cnn


def _conv2_bn_relu(channels: int, stride: tuple[int, int], padding: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 2, stride, padding, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class ClovaResNet(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H/16 - 1, W/4 + 1); see the module docstring."""

    BLOCKS = (1, 2, 5, 3)

    def __init__(self, in_channels: int = 3, out_channels: int = 512):
        super().__init__()
        c = int(out_channels)
        if c % 16:
            raise ValueError(f"ClovaResNet out_channels={c} must be a multiple of 16")
        widths = (c // 4, c // 2, c, c)
        self.stem = nn.Sequential(conv_bn_relu(in_channels, c // 16), conv_bn_relu(c // 16, c // 8), nn.MaxPool2d(2, 2))
        pools = (nn.MaxPool2d(2, 2), nn.MaxPool2d(2, (2, 1), (0, 1)), nn.Identity(), None)
        stages, cin = [], c // 8
        for width, count, pool in zip(widths, self.BLOCKS, pools):
            blocks = []
            for _ in range(count):
                blocks.append(BasicBlock(cin, width))
                cin = width
            if pool is None:  # the last stage ends in two 2x2 convs that take the height to 1 (for 32-high input)
                tail = [_conv2_bn_relu(width, (2, 1), (0, 1)), _conv2_bn_relu(width, (1, 1), (0, 0))]
            else:
                tail = [conv_bn_relu(width, width), pool]
            stages.append(nn.Sequential(nn.Sequential(*blocks), *tail))
        self.stages = nn.ModuleList(stages)
        self.out_channels = c
        init_cnn(self)

    @staticmethod
    def output_size(height: int, width: int) -> tuple[int, int]:
        """Feature map (H', W') for an input size: 32x100 -> 1x26, 32x128 -> 1x33."""
        h, w = height // 2 // 2, width // 2 // 2  # stem pool, stage-1 pool
        h, w = (h - 2) // 2 + 1, w + 1  # stage-2 pool
        h, w = (h - 2) // 2 + 1, w + 1  # 2x2 conv, stride (2, 1), padding (0, 1)
        h, w = h - 1, w - 1  # 2x2 conv
        if h < 1 or w < 1:
            raise ValueError(f"input {height}x{width} is too small for ClovaResNet")
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C/8, H/2, W/2)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, H/16 - 1, W/4 + 1)
