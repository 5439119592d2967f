"""PatchGAN discriminator (pix2pix / VQ-GAN) and the hinge losses.

forward(x: [B, 3, H, W] in [0, 1]) -> logits [B, 1, h, w], one real/fake score per overlapping patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.nn.conv import group_norm

__all__ = ["PatchDiscriminator", "hinge_d_loss", "call_frozen"]


class PatchDiscriminator(nn.Module):
    """``layers`` stride-2 4x4 convs (width doubling, capped at 8x) then two stride-1 4x4 convs.

    GroupNorm replaces pix2pix's BatchNorm: under DDP and with the small batches of this project BatchNorm
    statistics of real and fake batches differ and leak the label.
    """

    def __init__(self, *, channels: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            nxt = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(width, nxt, 4, stride=stride, padding=1, bias=False), group_norm(nxt), nn.LeakyReLU(0.2)]
            width = nxt
        seq.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 2 - 1)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def call_frozen(module: nn.Module, *args: Tensor) -> Tensor:
    """Run ``module`` with its parameters detached: gradients reach the inputs only.

    The generator's adversarial term goes through the discriminator this way, so a single optimizer over
    generator + discriminator parameters never lets that term push the discriminator's weights.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = dict(module.named_buffers())
    return torch.func.functional_call(module, {**params, **buffers}, args)
