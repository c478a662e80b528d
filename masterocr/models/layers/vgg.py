"""VGG-style feature extractors of the recurrent recognizers, written as a short layer list.

One module covers the variants in use, which differ only in widths, where BatchNorm sits and how the
height is pooled away:

    clovaai / EasyOCR (None-VGG-BiLSTM-CTC):  C64 M C128 M C256 C256 MH B512 B512 MH C512k2
        32x100 -> 512 x 1 x 24 (EasyOCR english_g2 halves every width and reads 64-pixel-high lines)
    CRNN paper / crnn.pytorch / strhub crnn:   C64 M C128 M B256 C256 MP B512 C512 MP B512k2
        32x100 -> 512 x 1 x 26 (pools that halve the height keep one more column)
    CRNN-Seq2Seq-OCR (MindSpore, per view):    C64 M C128 MH B256 C256 MH B384 C384 MH B384 C384 MH
                                               B384 C384 MH R B96k2
        128x128 -> 96 x 1 x 64

Tokens: `C<n>` 3x3 conv (padding 1, bias) + ReLU; `B<n>` 3x3 conv without bias + BatchNorm + ReLU; a `k2`
suffix makes it a 2x2 conv without padding. `M` 2x2 max pool; `MH` max pool halving the height only;
`MP` 2x2 max pool with stride (2, 1) and padding (0, 1) (halves the height, one column more); `R` one zero
column on the right. Modules are laid out flat in one nn.Sequential (conv, [bn], relu, pool ...), the
layout of clovaai's ConvNet, so its checkpoints map index for index.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

_CONV = re.compile(r"^([CB])(\d+)(k2)?$")
POOLS = {"M": ((2, 2), (2, 2), (0, 0)), "MH": ((2, 1), (2, 1), (0, 0)), "MP": ((2, 2), (2, 1), (0, 1))}


def parse_layer(token: str) -> tuple:
    """One token -> ("conv", channels, batchnorm, kernel) | ("pool", kernel, stride, padding) | ("pad",)."""
    token = str(token).strip()
    if token in POOLS:
        return ("pool", *POOLS[token])
    if token == "R":
        return ("pad",)
    match = _CONV.match(token)
    if not match:
        raise ValueError(f"VGG layer {token!r}: expected C<n>, B<n> (optionally with k2), M, MH, MP or R")
    return ("conv", int(match.group(2)), match.group(1) == "B", 2 if match.group(3) else 3)


class VGG(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H', W') for a layer list (see the module docstring)."""

    def __init__(self, in_channels: int, layers: Sequence[str]):
        super().__init__()
        self.specs = [parse_layer(t) for t in layers]
        if not any(s[0] == "conv" for s in self.specs):
            raise ValueError(f"VGG layers {list(layers)} hold no convolution")
        modules: list[nn.Module] = []
        cin = int(in_channels)
        for spec in self.specs:
            if spec[0] == "conv":
                _, cout, bn, k = spec
                modules.append(nn.Conv2d(cin, cout, k, 1, 1 if k == 3 else 0, bias=not bn))
                if bn:
                    modules.append(nn.BatchNorm2d(cout))
                modules.append(nn.ReLU(inplace=True))
                cin = cout
            elif spec[0] == "pool":
                modules.append(nn.MaxPool2d(spec[1], spec[2], spec[3]))
            else:
                modules.append(nn.ZeroPad2d((0, 1, 0, 0)))
        self.layers = nn.Sequential(*modules)
        self.out_channels = cin

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature map (H', W') for an input size, walking the layers (floor division, as the ops do)."""
        h, w = int(height), int(width)
        for spec in self.specs:
            if spec[0] == "conv" and spec[3] == 2:
                h, w = h - 1, w - 1
            elif spec[0] == "pool":
                (kh, kw), (sh, sw), (ph, pw) = spec[1:]
                h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            elif spec[0] == "pad":
                w += 1
            if h < 1 or w < 1:
                raise ValueError(f"input {height}x{width} is too small for these VGG layers")
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def init_cnn(module: nn.Module) -> None:
    """He init for convolutions, unit BatchNorm: what the clovaai models start from."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
