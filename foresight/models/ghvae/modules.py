"""One GHVAE module: encoder, decoder, recurrent-convolutional prior and posterior.

Module k (1-based) with shapes from `module_shapes`::

    encoder    h_t^{k-1} [N, C^{k-1}, H^{k-1}, W^{k-1}]  ->  h_t^k [N, C^k, H^k, W^k]     (x_t for k = 1)
    decoder    (h_t^k, u_{t+1}^k [N, Z^k, H^k, W^k], a_t) ->  u_{t+1}^{k-1}              (x_{t+1} for k = 1)
               in two halves: ``step`` -> the level-k bottleneck y [N, C^k, H^k, W^k], ``out(y)`` upsamples
    next_feature  y -> h_t^k + head(y) = the predicted next encoding h_{t+1}^k (for latent rollouts)
    prior      ConvLSTM over cat(h_t^k, a_t tiled)       ->  mean, log-std of z_{t+1}^k  [N, Z^k, H^k, W^k]
    posterior  ConvLSTM over h_{t+1}^k                   ->  mean of z_{t+1}^k (its std is fixed)

The action a_t enters the decoder's deterministic path (``action_in_decoder``) by FiLM on the bottleneck:
``y = blocks(inp(cat(h, u)) * (1 + gamma(a)) + beta(a))``. With a near-zero KL the prior is a path the model can
ignore (z carries almost nothing at a fixed posterior std of 1); the decoder cannot ignore an input that
explains the motion, which is how SVG, SV2P and FitVid condition on actions (in their deterministic frame
predictor, not only in the latent). gamma and beta are one linear layer; a checkpoint written before they
existed loads them as zeros, which is exactly the old, action-blind decoder.

``u^k`` is "the future at level k" in the channels of z^k: when module k is the deepest, u^k = z^k (sampled
from the posterior in training and from the prior at inference); when a deeper module k+1 exists, its decoder
produces u^k from its own h^{k+1} and u^{k+1}. So every decoder projects the stochasticity of the level below
it into its own level, and only the deepest z is ever sampled.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from foresight.nn import conv
from foresight.nn.convlstm import ConvLSTMCell

from .config import ModuleShape

__all__ = ["GHVAEModule", "ResBlock"]

LOGSTD_MIN, LOGSTD_MAX = -6.0, 4.0


def _norm(channels: int) -> nn.GroupNorm:
    return conv.group_norm(channels, max_groups=8, eps=1e-5)  # 8 groups (the widths are multiples of 8)


class ResBlock(conv.ResBlock):
    """The shared pre-activation residual block at one width, with GHVAE's 8 groups (eps 1e-5); keeps [N, C, H, W]."""

    # Checkpoints saved before the block was shared name its layers body.0 .. body.5 (an nn.Sequential).
    _OLD_NAMES = {"body.0.": "norm1.", "body.2.": "conv1.", "body.3.": "norm2.", "body.5.": "conv2."}

    def __init__(self, channels: int):
        super().__init__(in_channels=channels, max_groups=8, eps=1e-5)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for old, new in self._OLD_NAMES.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Encoder(nn.Module):
    def __init__(self, shape: ModuleShape, res_blocks: int):
        super().__init__()
        stem = (nn.Conv2d(shape.in_channels, shape.channels, 4, stride=2, padding=1) if shape.downsample
                else nn.Conv2d(shape.in_channels, shape.channels, 3, padding=1))
        self.net = nn.Sequential(stem, *[ResBlock(shape.channels) for _ in range(res_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _fill_missing_with_zeros(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Weights that a checkpoint predates load as zeros (a no-op layer), so old checkpoints keep working."""
    for name in names:
        child = getattr(module, name)
        if child is None:
            continue
        for key, param in child.named_parameters(prefix=prefix + name):
            if key not in state_dict:
                state_dict[key] = torch.zeros_like(param)


class Decoder(nn.Module):
    def __init__(self, shape: ModuleShape, res_blocks: int, action_dim: int = 0):
        super().__init__()
        ch = shape.channels
        self.inp = nn.Conv2d(ch + shape.latent, ch, 3, padding=1)
        # FiLM of the bottleneck by the action: (1 + gamma(a), beta(a)), each [N, C^k]
        self.action = nn.Linear(action_dim, 2 * ch) if action_dim > 0 else None
        self.blocks = nn.Sequential(*[ResBlock(ch) for _ in range(res_blocks)])
        out_width = max(shape.in_channels, 16)  # width at the output resolution (k = 1 would be just 3)
        up = (nn.ConvTranspose2d(ch, out_width, 4, stride=2, padding=1) if shape.downsample
              else nn.Conv2d(ch, out_width, 3, padding=1))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), up, _norm(out_width), nn.SiLU(),
                                 nn.Conv2d(out_width, shape.out_channels, 3, padding=1))
        if shape.index == 1:
            # Module 1 emits the pixel residual x_{t+1} - x_t: start from "nothing moves" (copy-last-frame).
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _fill_missing_with_zeros(self, state_dict, prefix, ("action",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def step(self, h: Tensor, u: Tensor, action: Tensor | None = None) -> Tensor:
        """The level-k half: ``(h_t^k, u^k, a_t [N, A])`` -> bottleneck ``y [N, C^k, H^k, W^k]``."""
        x = self.inp(torch.cat([h, u], dim=1))  # [N, C^k, H^k, W^k]
        if self.action is not None:
            if action is None:
                raise ValueError("this decoder is action-conditioned and needs actions")
            gamma, beta = self.action(action.to(x.dtype))[:, :, None, None].chunk(2, dim=1)  # [N, C^k, 1, 1] x2
            x = x * (1 + gamma) + beta
        return self.blocks(x)

    def forward(self, h: Tensor, u: Tensor, action: Tensor | None = None) -> Tensor:
        return self.out(self.step(h, u, action))  # [N, out, H^{k-1}, W^{k-1}]


class GaussianConvLSTM(nn.Module):
    """ConvLSTM followed by a 1x1 conv to a diagonal Gaussian (mean, and log-std when ``learn_std``)."""

    def __init__(self, *, in_channels: int, hidden: int, latent: int, learn_std: bool):
        super().__init__()
        self.learn_std = learn_std
        self.cell = ConvLSTMCell(in_channels=in_channels, hidden_channels=hidden)
        self.head = nn.Conv2d(hidden, latent * (2 if learn_std else 1), 1)

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        h, state = self.cell(x, state)
        out = self.head(h)
        if not self.learn_std:
            return out, None, state
        mean, logstd = out.chunk(2, dim=1)
        return mean, logstd.clamp(LOGSTD_MIN, LOGSTD_MAX), state


class GHVAEModule(nn.Module):
    """Module k's four sub-networks (``W^k = {enc, dec, prior, post}`` in the paper)."""

    def __init__(self, shape: ModuleShape, *, action_dim: int, res_blocks: int, action_in_decoder: bool = True,
                 readout_size: int = 16):
        super().__init__()
        self.shape = shape
        self.action_dim = action_dim
        self.encoder = Encoder(shape, res_blocks)
        self.decoder = Decoder(shape, res_blocks, action_dim if action_in_decoder else 0)
        # Reads the predicted next encoding h_{t+1}^k off the decoder's bottleneck (trained as a probe, see
        # GHVAE.loss), so a rollout can stay at this level and never decode pixels.
        self.next_feature = nn.Sequential(_norm(shape.channels), nn.SiLU(),
                                          nn.Conv2d(shape.channels, shape.channels, 3, padding=1))
        # Reads a small image (3 x R x R, R = readout_size) off h^k: the model-space cost's embedding
        # (``GHVAEConfig.embedding = "readout"``). Sub-pixel upsampling by R / H^k when R > H^k, else pooling.
        self.readout_scale = max(1, readout_size // shape.size)
        self.readout_size = readout_size
        self.readout = nn.Sequential(
            nn.Conv2d(shape.channels, shape.channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(shape.channels, 3 * self.readout_scale**2, 1))
        self.prior = GaussianConvLSTM(in_channels=shape.channels + action_dim, hidden=shape.lstm,
                                      latent=shape.latent, learn_std=True)
        self.posterior = GaussianConvLSTM(in_channels=shape.channels, hidden=shape.lstm,
                                          latent=shape.latent, learn_std=False)

    def prior_step(self, h: Tensor, action: Tensor | None, state=None):
        """p(z_{t+1} | h_t, a_t): h [N, C, H, W], action [N, A] (None when action-free) -> mean, logstd, state."""
        if self.action_dim > 0:
            if action is None:
                raise ValueError(f"module {self.shape.index}: this module is action-conditioned and needs actions")
            tiled = action[:, :, None, None].expand(-1, -1, h.shape[-2], h.shape[-1])  # [N, A, H, W]
            h = torch.cat([h, tiled.to(h.dtype)], dim=1)
        return self.prior(h, state)

    def read_out(self, h: Tensor) -> Tensor:
        """h^k [N, C^k, H^k, W^k] -> the low-resolution image it shows, [N, 3, R, R] (about [0, 1])."""
        x = self.readout(h)
        if self.readout_scale > 1:
            x = nn.functional.pixel_shuffle(x, self.readout_scale)
        if x.shape[-1] != self.readout_size:
            x = nn.functional.adaptive_avg_pool2d(x, self.readout_size)
        return x

    def predict_feature(self, h: Tensor, y: Tensor) -> Tensor:
        """h_t^k and the decoder bottleneck y (both [N, C^k, H^k, W^k]) -> predicted h_{t+1}^k."""
        return h + self.next_feature(y)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint from before the head existed: a zero head predicts "the features do not change".
        _fill_missing_with_zeros(self, state_dict, prefix, ("next_feature",))
        # The readout has no role in an older model (its embedding was h^d): keep its fresh initialisation, so a
        # fine-tune with embedding="readout" can train it (an all-zero two-layer head would get no gradient).
        for key, param in self.readout.named_parameters(prefix=prefix + "readout"):
            state_dict.setdefault(key, param.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
