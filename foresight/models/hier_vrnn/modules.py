"""Hier-VRNN building blocks: the frame encoder pyramid, one latent level's ConvLSTM prior or posterior, and the
recurrent frame decoder (the likelihood).

Axis legend: N rows (clips x samples), C context frames, Ch channels, r the side of a square feature map,
A action dim, l latent level (0 = the 1x1 top level, the first one sampled).

Per predicted frame x_t (paper Sec. 4.2, Fig. 3), with f_t = encoder(x_t) the feature pyramid::

    prior_l      ConvLSTM(cat(f_{t-1}[r_l], z_t^{<l} resized to r_l, a_{t-1} tiled)) -> N(mean, std) of z_t^l
    posterior_l  ConvLSTM(cat(f_t[r_l],     z_t^{<l} resized to r_l, a_{t-1} tiled)) -> N(mean, std) of z_t^l
    decoder      ConvLSTMs at decoder_sizes, each over cat(upsampled level below, f_{t-1}[r], z_t^{1..L} resized
                 to r, a_{t-1} tiled), interleaved with transposed convs; then (optional) upsampling stages with a
                 skip of f_{t-1} up to H, W, and a conv to 3 channels

Dense connectivity (Sec. 4.1): every level's prior and posterior read all levels above it, and every decoder
ConvLSTM reads every level. The action is tiled over space and concatenated wherever a frame feature enters a
recurrence of the prior, posterior or decoder (not FiLM): the same input path the frame history takes. Every
ConvLSTM starts from a state computed from the C context frames' features by a small conv ("Initial State").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.nn.conv import ResBlock, group_norm
from foresight.nn.convlstm import ConvLSTMCell

from .config import HierVRNNConfig, feature_channels, pyramid_sizes

__all__ = ["FrameEncoder", "LatentLevel", "FrameDecoder", "resize", "tile"]

# Bounds on a Gaussian's log-std: exp(-6) ~ 2.5e-3 keeps 1 / var finite in the KL; exp(3) ~ 20 is far above any
# useful latent scale (a prior that wide only appears when training diverges).
LOGSTD_MIN, LOGSTD_MAX = -6.0, 3.0

State = tuple[Tensor, Tensor]


def resize(x: Tensor, size: int) -> Tensor:
    """``[N, Ch, r, r] -> [N, Ch, size, size]``: nearest upsampling (a 1x1 map is broadcast) or area pooling."""
    r = x.shape[-1]
    if r == size:
        return x
    if r < size:
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.adaptive_avg_pool2d(x, size)


def tile(action: Tensor | None, size: int) -> list[Tensor]:
    """``a [N, A]`` -> ``[a tiled [N, A, size, size]]`` (an empty list for an action-free model)."""
    if action is None:
        return []
    return [action[:, :, None, None].expand(-1, -1, size, size)]


def _kernel(size: int) -> int:
    return 1 if size == 1 else 3  # a 3x3 conv on a 1x1 map only ever uses its centre tap


def _hidden(config: HierVRNNConfig, size: int) -> int:
    return min(feature_channels(config, size), config.lstm_channels)


class StateInit(nn.Module):
    """Context features ``[N, C, Ch, r, r]`` -> a ConvLSTM's initial ``(h, c)``, each ``[N, hidden, r, r]``."""

    def __init__(self, *, context_frames: int, channels: int, hidden: int, size: int):
        super().__init__()
        k = _kernel(size)
        self.conv = nn.Conv2d(context_frames * channels, 2 * hidden, k, padding=k // 2)

    def forward(self, context: Tensor) -> State:
        h, c = self.conv(context.flatten(1, 2)).chunk(2, dim=1)
        return torch.tanh(h), c  # h in the range of a ConvLSTM output; c unbounded like a cell state


class FrameEncoder(nn.Module):
    """``x [N, 3, H, W]`` in [0, 1] -> ``{r: f[r] [N, Ch_r, r, r]}`` for every pyramid size r.

    ResNet blocks and 2x2 max-pooling (the seed's frame encoder); the 1x1 top feature is one conv over the whole
    smallest map (no spatial topology).
    """

    def __init__(self, config: HierVRNNConfig):
        super().__init__()
        self.sizes = pyramid_sizes(config)
        first = feature_channels(config, self.sizes[0])
        self.stem = nn.Conv2d(3, first, 3, padding=1)
        levels, in_ch = [], first
        for r in self.sizes[:-1]:
            ch = feature_channels(config, r)
            blocks = [ResBlock(in_channels=in_ch, out_channels=ch)]
            blocks += [ResBlock(in_channels=ch) for _ in range(config.res_blocks - 1)]
            levels.append(nn.Sequential(*blocks))
            in_ch = ch
        self.levels = nn.ModuleList(levels)
        self.top = nn.Sequential(group_norm(in_ch), nn.SiLU(),
                                 nn.Conv2d(in_ch, config.top_channels, self.sizes[-2]))  # [N, top, 1, 1]

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        h = self.stem(x * 2 - 1)
        out: dict[int, Tensor] = {}
        for i, (r, level) in enumerate(zip(self.sizes, self.levels)):
            if i > 0:
                h = F.max_pool2d(h, 2)  # [N, Ch, r, r]
            h = level(h)
            out[r] = h
        out[1] = self.top(h)
        return out


class LatentLevel(nn.Module):
    """The prior or the posterior of latent level l: a ConvLSTM at size r_l and a 1x1 conv to mean and log-std.

    Prior and posterior of a level have the same input layout (frame feature, the levels above, the action);
    they differ in which frame feature they are given (x_{t-1} for the prior, x_t for the posterior).
    """

    def __init__(self, config: HierVRNNConfig, level: int):
        super().__init__()
        self.size = config.latent_sizes[level]
        self.latent = config.latent_channels[level]
        channels = feature_channels(config, self.size)
        above = sum(config.latent_channels[:level])
        hidden = _hidden(config, self.size)
        self.init = StateInit(context_frames=config.context_frames, channels=channels, hidden=hidden, size=self.size)
        self.cell = ConvLSTMCell(in_channels=channels + above + config.action_dim, hidden_channels=hidden,
                                 kernel_size=_kernel(self.size))
        self.head = nn.Conv2d(hidden, 2 * self.latent, 1)

    def forward(self, feature: Tensor, above: list[Tensor], action: Tensor | None,
                state: State) -> tuple[Tensor, Tensor, State]:
        """``feature [N, Ch, r, r]``, ``above`` the samples z^{<l} (any sizes), ``action [N, A]`` or None ->
        mean, log-std (each ``[N, Z_l, r, r]``) and the new state."""
        r = self.size
        x = torch.cat([feature, *(resize(z, r) for z in above), *tile(action, r)], dim=1)
        h, state = self.cell(x, state)
        mean, logstd = self.head(h).chunk(2, dim=1)
        return mean, logstd.clamp(LOGSTD_MIN, LOGSTD_MAX), state


def _upsampler(in_ch: int, out_ch: int, r_from: int, r_to: int) -> nn.Sequential:
    """Transposed convs from ``[N, in, r_from, r_from]`` to ``[N, out, r_to, r_to]``: one ``r_to``-wide kernel
    from a 1x1 map, else one stride-2 transposed conv per doubling. No norm on the way: a GroupNorm over a
    1x1 map's single-channel groups would output zeros."""
    if r_from == 1:
        return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, r_to), nn.SiLU())
    steps = int(math.log2(r_to // r_from))
    layers: list[nn.Module] = []
    for i in range(steps):
        layers += [nn.ConvTranspose2d(in_ch if i == 0 else out_ch, out_ch, 4, stride=2, padding=1), nn.SiLU()]
    return nn.Sequential(*layers)


class _SkipUp(nn.Module):
    """Doubling stage after the last decoder ConvLSTM: transposed conv, then a conv over cat(it, f_{t-1}[2r])."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.mix = nn.Sequential(nn.Conv2d(out_ch + skip_ch, out_ch, 3, padding=1), group_norm(out_ch), nn.SiLU())

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.mix(torch.cat([F.silu(self.up(x)), skip], dim=1))


class FrameDecoder(nn.Module):
    """The likelihood p(x_t | z_t, x_{<t}, c): ConvLSTMs at ``decoder_sizes`` interleaved with transposed convs.

    ``step(f_{t-1}, [z_t^0..z_t^{L-1}], a_{t-1}, state)`` -> (output ``[N, 3, H, W]``, new state): the residual
    x_t - x_{t-1} (``residual``) or the logits of x_t. The decoder's ConvLSTM states are the model's deterministic
    recurrent path: they carry the history of frames, latents and actions from step to step.
    """

    def __init__(self, config: HierVRNNConfig):
        super().__init__()
        self.sizes = list(config.decoder_sizes)
        latent = sum(config.latent_channels)
        inits, cells, ups = [], [], []
        below = 0
        for j, r in enumerate(self.sizes):
            channels, hidden = feature_channels(config, r), _hidden(config, r)
            inits.append(StateInit(context_frames=config.context_frames, channels=channels, hidden=hidden, size=r))
            cells.append(ConvLSTMCell(in_channels=below + channels + latent + config.action_dim,
                                      hidden_channels=hidden, kernel_size=_kernel(r)))
            if j + 1 < len(self.sizes):
                nxt = _hidden(config, self.sizes[j + 1])
                ups.append(_upsampler(hidden, nxt, r, self.sizes[j + 1]))
                below = nxt
        self.inits, self.cells, self.ups = nn.ModuleList(inits), nn.ModuleList(cells), nn.ModuleList(ups)
        # Sizes above the last ConvLSTM up to the frame: plain upsampling stages with a skip of f_{t-1}.
        tail, ch, r = [], _hidden(config, self.sizes[-1]), self.sizes[-1]
        self.tail_sizes = []
        while r < config.image_size:
            r *= 2
            out_ch = feature_channels(config, r)
            tail.append(_SkipUp(ch, out_ch, out_ch))
            self.tail_sizes.append(r)
            ch = out_ch
        self.tail = nn.ModuleList(tail)
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1))
        if config.residual:
            # Start from "nothing moves" (copy the previous frame), as the other models of the library do.
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def initial_state(self, context: dict[int, Tensor]) -> list[State]:
        """``context[r] [N, C, Ch, r, r]`` -> one initial state per decoder ConvLSTM."""
        return [init(context[r]) for init, r in zip(self.inits, self.sizes)]

    def step(self, feature: dict[int, Tensor], latents: list[Tensor], action: Tensor | None,
             state: list[State]) -> tuple[Tensor, list[State]]:
        new_state: list[State] = []
        x = None
        for j, (cell, r) in enumerate(zip(self.cells, self.sizes)):
            parts = ([] if x is None else [x]) + [feature[r]] + [resize(z, r) for z in latents] + tile(action, r)
            h, s = cell(torch.cat(parts, dim=1), state[j])  # [N, hidden_j, r, r]
            new_state.append(s)
            x = self.ups[j](h) if j < len(self.ups) else h
        for stage, r in zip(self.tail, self.tail_sizes):
            x = stage(x, feature[r])  # [N, Ch_r, r, r]
        return self.head(x), new_state  # [N, 3, H, W]
