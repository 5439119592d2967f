"""Convolutional building blocks: residual blocks, resampling, spatial self-attention, a small ResNet.

Axis legend: B batch, Ch channels, H, W spatial size. All blocks map ``[B, Ch, H, W] -> [B, Ch', H', W']``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["group_norm", "ResBlock", "Downsample", "Upsample", "SpatialAttention", "ResNetFeatures"]


def group_norm(channels: int, max_groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with the most groups that divide ``channels``, up to ``max_groups``: gcd(max_groups, channels).

    32 groups as in VQ-GAN when the width allows it (tiny test models have fewer channels); GHVAE and the conv
    baseline use ``max_groups=8, eps=1e-5``, the policy ResNets ``eps=1e-5``.
    """
    return nn.GroupNorm(math.gcd(max_groups, channels), channels, eps=eps)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, 3x3 conv) x2 with a 1x1 skip when widths differ."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 max_groups: int = 32, eps: float = 1e-6):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels, max_groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, max_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv: [B, Ch, H, W] -> [B, Ch, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (no checkerboard artefacts of transposed convs): [B, Ch, H, W] -> [B, Ch, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SpatialAttention(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # [B, HW, Ch] each
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [B, HW, Ch]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.skip = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                      group_norm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(h)))


class ResNetFeatures(nn.Module):
    """A ResNet (basic blocks, ResNet-18 layout with ``blocks=(2, 2, 2, 2)``) returning a feature MAP.

    forward(x: [B, 3, H, W] in [0, 1]) -> [B, out_channels, H / downsample, W / downsample].
    The first ``log2(downsample)`` stages halve the resolution; later stages keep it (VideoGPT conditions its
    transformer on a ResNet feature map of the context frames; HARP uses ResNet-18). GroupNorm instead of
    BatchNorm so the features do not depend on the batch (planners evaluate hundreds of copies of one context).
    """

    def __init__(self, *, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: tuple[int, ...] = (2, 2, 2, 2),
                 downsample: int = 4, out_channels: int = 512):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} must have the same length")
        n_down = downsample.bit_length() - 1
        if 2**n_down != downsample or n_down > len(widths):
            raise ValueError(f"downsample must be a power of two <= 2**{len(widths)}, got {downsample}")
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), group_norm(widths[0]), nn.ReLU())
        layers, in_ch = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (j == 0 and i < n_down) else 1
                layers.append(_BasicBlock(in_ch, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.out = nn.Conv2d(in_ch, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.layers(self.stem(x * 2 - 1)))
