"""Shared building blocks in foresight/nn: one GroupNorm rule for every model."""

import math

import pytest
import torch

from foresight.nn.conv import group_norm


@pytest.mark.parametrize("channels", [1, 2, 4, 8, 12, 16, 24, 48, 64, 96, 128, 256, 512])
def test_group_norm_takes_the_most_groups_that_divide_the_width(channels):
    norm = group_norm(channels)
    assert norm.num_groups == math.gcd(32, channels) and channels % norm.num_groups == 0 and norm.eps == 1e-6
    # VQ-GAN's rule: 32 groups when the width allows it, else the largest power of two that divides it
    assert norm.num_groups == (32 if channels % 32 == 0 else next(g for g in (16, 8, 4, 2, 1) if channels % g == 0))


@pytest.mark.parametrize("channels", [8, 16, 32, 64, 128, 256, 512])
def test_group_norm_with_eight_groups_is_what_ghvae_and_the_conv_baseline_were_trained_with(channels):
    norm = group_norm(channels, max_groups=8, eps=1e-5)
    old = torch.nn.GroupNorm(min(8, channels), channels)  # the rule their saved checkpoints were made with
    x = torch.randn(2, channels, 5, 5)
    assert norm.num_groups == old.num_groups and norm.eps == old.eps
    assert torch.equal(norm(x), old(x))


def test_models_use_the_shared_group_norm():
    from agents.policies.backbones import _norm_layer
    from foresight.models.ghvae.modules import ResBlock

    block = ResBlock(16)
    norms = [m for m in block.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 and m.eps == 1e-5 for m in norms)
    assert _norm_layer("group")(48).num_groups == 16 and _norm_layer("group")(48).eps == 1e-5


def test_ghvae_resblock_loads_checkpoints_saved_with_the_old_layer_names():
    from torch import nn

    from foresight.models.ghvae.modules import ResBlock

    torch.manual_seed(0)
    old = nn.Sequential(nn.GroupNorm(8, 16), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.GroupNorm(8, 16), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1))  # the block as it was
    for p in old.parameters():
        nn.init.normal_(p, std=0.3)
    parent = nn.Module()
    parent.block = ResBlock(16)
    parent.load_state_dict({f"block.body.{k}": v for k, v in old.state_dict().items()})  # strict: every key used
    x = torch.randn(2, 16, 6, 6)
    assert torch.allclose(parent.block(x), x + old(x), atol=1e-6)
    assert set(parent.block.state_dict()) == {f"{n}.{p}" for n in ("norm1", "conv1", "norm2", "conv2")
                                               for p in ("weight", "bias")}
