"""Thin-plate-spline spatial transformer (RARE, Shi et al. 2016), the rectification stage of TRBA.

A small CNN (the localisation network) predicts F fiducial points on the input image; a thin-plate spline
maps F fixed points on the rectified output (evenly spaced along its top and bottom edges) onto them, and
the output is sampled from the input with `grid_sample`. Everything after the localisation network is two
batched matrix products with constant matrices (built once in NumPy, float64), so the module exports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def fiducial_points(num: int) -> np.ndarray:
    """(num, 2) control points in [-1, 1] coordinates (x, y): num/2 along the top edge, num/2 along the bottom."""
    x = np.linspace(-1.0, 1.0, num // 2)
    return np.concatenate([np.stack([x, -np.ones_like(x)], 1), np.stack([x, np.ones_like(x)], 1)], 0)


def _tps_kernel(d: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r, with U(0) = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, d * d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def tps_matrices(num: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The two constants of the grid generator.

    inverse (F+3, F+3): solves for the spline's coefficients given target points (zero-padded by 3 rows).
    basis (H*W, F+3): [1, x, y, U(|p - c_i|)...] of every output pixel centre p (row-major), so that
    grid = basis @ inverse @ [C'; 0] maps each output pixel to its sampling position in the input.
    """
    c = fiducial_points(num)  # (F, 2)
    k = _tps_kernel(np.linalg.norm(c[:, None] - c[None], axis=2))  # (F, F)
    system = np.zeros((num + 3, num + 3))
    system[:num, 0] = 1.0
    system[:num, 1:3] = c
    system[:num, 3:] = k
    system[num, 3:] = 1.0
    system[num + 1:, 3:] = c.T
    inverse = np.linalg.inv(system)
    xs = (np.arange(width) * 2 + 1.0) / width - 1.0  # pixel centres in [-1, 1] (align_corners=False style)
    ys = (np.arange(height) * 2 + 1.0) / height - 1.0
    p = np.stack(np.meshgrid(xs, ys), 2).reshape(-1, 2)  # (H*W, 2), x fastest
    dist = np.linalg.norm(p[:, None] - c[None], axis=2)  # (H*W, F)
    basis = np.concatenate([np.ones((len(p), 1)), p, _tps_kernel(dist)], 1)
    return inverse, basis


class LocalizationNet(nn.Module):
    """(B, C, H, W) -> (B, F, 2) fiducial points in [-1, 1], starting at the identity transform."""

    def __init__(self, num_fiducials: int, in_channels: int):
        super().__init__()
        layers, cin = [], in_channels
        for i, cout in enumerate((64, 128, 256, 512)):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2, 2) if i < 3 else nn.AdaptiveAvgPool2d(1))
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.fc1 = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(256, num_fiducials * 2)
        # RARE's initialisation: zero weights and the fiducials of a gently curved band as bias, so training
        # starts near the identity (the top row slopes up 0 -> -1 and the bottom row down 1 -> 0 in y).
        nn.init.zeros_(self.fc2.weight)
        half = num_fiducials // 2
        x = np.linspace(-1.0, 1.0, half)
        top = np.stack([x, np.linspace(0.0, -1.0, half)], 1)
        bottom = np.stack([x, np.linspace(1.0, 0.0, half)], 1)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.from_numpy(np.concatenate([top, bottom]).reshape(-1)).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        feats = self.conv(images).flatten(1)  # (B, 512)
        return self.fc2(self.fc1(feats)).reshape(b, -1, 2)  # (B, F, 2)


class TPS(nn.Module):
    """Rectify (B, C, H, W) images into (B, C, *output_size) with a learned thin-plate spline."""

    def __init__(self, num_fiducials: int, in_channels: int, output_size: tuple[int, int]):
        super().__init__()
        if num_fiducials < 4 or num_fiducials % 2:
            raise ValueError(f"TPS needs an even number of fiducial points >= 4, got {num_fiducials}")
        self.num_fiducials = int(num_fiducials)
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.localization = LocalizationNet(self.num_fiducials, in_channels)
        inverse, basis = tps_matrices(self.num_fiducials, *self.output_size)
        # (H*W, F) = basis @ inverse[:, :F]: the grid is one matrix product with the predicted points. Constants
        # of the configuration, rebuilt on load, so they are not saved with the weights.
        self.register_buffer("grid_matrix", torch.from_numpy(basis @ inverse[:, :num_fiducials]).float(),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        points = self.localization(images)  # (B, F, 2)
        dtype = torch.promote_types(points.dtype, torch.float32)  # sampling positions in fp32 even under bf16
        with torch.autocast(images.device.type, enabled=False):
            grid = torch.matmul(self.grid_matrix.to(dtype), points.to(dtype))  # (B, H*W, 2)
        grid = grid.reshape(images.shape[0], *self.output_size, 2)  # (B, H, W, 2), (x, y) in [-1, 1]
        return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border",
                             align_corners=True)
