"""Video VQ-VAE stage 1: a two-level VQ-VAE over clips (a coarse TOP latent and a finer BOTTOM latent).

Axis legend::

    B  clips      T  frames      Ch  channels      E  code width      K  codebook size (per level)
    Tb = T / dt  bottom steps    hb = H / ds  bottom codes per side
    Tt = Tb / rt  top steps      ht = hb / rs  top codes per side

Architecture (seed Sec. 3.1, App. Table 3, after Razavi et al.'s VQ-VAE-2): strided 3D convolutions and residual
blocks downsample the clip to the bottom latent (seed: 256x256x16 -> 64x64x8); a second stack of the same kind
reduces every axis by 2 again to the top latent (32x32x4). Each level has its own EMA codebook
(`foresight.nn.quantizer.VectorQuantizer`). The decoder upsamples the quantised top latent with transposed 3D
convolutions to the bottom resolution, concatenates it with the quantised bottom latent and decodes the clip.
While training, the bottom half of that concatenation is zeroed for a random ``bottom_mask_prob`` share of the
clips, so that the decoder must learn to use the top latent (the seed's remedy against the top codebook
collapsing; the seed gives no rate). Loss: MSE of the frames plus both commitment terms (the seed's Eq. 2 with
EMA codebooks).

What differs from the seed, and why: every stack is CAUSAL IN TIME at the granularity of latent steps, with the
blocks of VideoGPT's clip VQ-VAE (`foresight.models.videogpt.vqvae`: past-padded `CausalConv3d`, per-position
LayerNorm residual blocks without attention, transposed convolutions whose time kernel equals their stride).
Bottom step j sees frames < (j + 1) dt only, top step k frames < (k + 1) dt rt only, and the frames of bottom
step j are decoded from bottom steps <= j and top steps <= j // rt. So ``encode(context)`` gives exactly the
codes the context steps have inside a whole training clip (prediction knows only the context frames), and a
prefix of the latents decodes to a prefix of the video. The decoder has no attention and no positions, so it
decodes clips of any length (a rollout longer than the trained clips).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.models.video_vqvae.config import VideoVQVAEConfig
from foresight.models.videogpt.vqvae import AttentionResBlock, CausalConv3d, ChannelNorm
from foresight.nn.quantizer import VectorQuantizer

__all__ = ["HierarchicalVQVAE", "resampling_plan"]


def resampling_plan(time_factor: int, space_factor: int) -> list[tuple[int, int]]:
    """(time stride, space stride) of each resampling layer: both halve until each reaches its factor."""
    n_t, n_s = int(math.log2(time_factor)), int(math.log2(space_factor))
    return [(2 if i < n_t else 1, 2 if i < n_s else 1) for i in range(max(n_t, n_s))]


def _res_stack(config: VideoVQVAEConfig) -> nn.ModuleList:
    # VideoGPT's residual block without its axial attention: the seed's VQ-VAE has none.
    return nn.ModuleList(AttentionResBlock(config.hidden, config.res_channels, 1, attention=False)
                         for _ in range(config.res_layers))


class _Down(nn.Module):
    """Causal strided 3D convs then residual blocks: ``[B, Cin, T, H, W] -> [B, Ch, T / ft, H / fs, W / fs]``."""

    def __init__(self, config: VideoVQVAEConfig, in_channels: int, time_factor: int, space_factor: int):
        super().__init__()
        ch, layers = config.hidden, []
        for st, ss in resampling_plan(time_factor, space_factor):
            kernel = (4 if st == 2 else 3, 4 if ss == 2 else 3, 4 if ss == 2 else 3)
            layers.append(CausalConv3d(in_channels, ch, kernel, (st, ss, ss)))
            in_channels = ch
        self.downs = nn.ModuleList(layers)
        self.conv = CausalConv3d(in_channels, ch, (3, 3, 3))
        self.blocks = _res_stack(config)

    def forward(self, x: Tensor) -> Tensor:
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else F.relu(x))
        x = self.conv(F.relu(x) if self.downs else x)
        for block in self.blocks:
            x = block(x, None)
        return x


def _up_layers(in_channels: int, hidden: int, out_channels: int, time_factor: int, space_factor: int) -> nn.ModuleList:
    plan = resampling_plan(time_factor, space_factor)
    layers = []
    for i, (st, ss) in enumerate(plan):
        out = out_channels if i == len(plan) - 1 else hidden
        # time kernel == time stride: each latent step writes its own output steps and no others (causal)
        layers.append(nn.ConvTranspose3d(in_channels if i == 0 else hidden, out,
                                         (st, 4 if ss == 2 else 3, 4 if ss == 2 else 3),
                                         stride=(st, ss, ss), padding=(0, 1, 1)))
    return nn.ModuleList(layers)


def _run_ups(layers: nn.ModuleList, x: Tensor) -> Tensor:
    for i, up in enumerate(layers):
        x = up(x if i == 0 else F.relu(x))
    return x


def _channels_first(frames: Tensor) -> Tensor:
    return frames.permute(0, 2, 1, 3, 4)  # [B, T, 3, H, W] <-> [B, 3, T, H, W]


class HierarchicalVQVAE(nn.Module):
    """The two-level clip tokenizer: ``encode_codes`` / ``decode_codes`` for inference, ``loss`` for stage 1."""

    def __init__(self, config: VideoVQVAEConfig):
        super().__init__()
        self.config = config
        ch, e = config.hidden, config.code_dim
        self.bottom_encoder = _Down(config, 3, config.time_downsample, config.space_downsample)
        self.bottom_norm = ChannelNorm(ch)
        self.to_bottom_code = CausalConv3d(ch, e, (1, 1, 1))
        self.top_encoder = _Down(config, ch, config.top_time_downsample, config.top_space_downsample)
        self.top_norm = ChannelNorm(ch)
        self.to_top_code = CausalConv3d(ch, e, (1, 1, 1))
        quantizer = dict(num_codes=config.codebook_size, code_dim=e, beta=config.beta, decay=config.ema_decay,
                         dead_threshold=config.dead_code_threshold)
        self.bottom_quantizer = VectorQuantizer(**quantizer)
        self.top_quantizer = VectorQuantizer(**quantizer)
        # decoder: top latent up to the bottom grid, concatenated with the bottom latent, then up to frames
        self.top_up = _up_layers(e, ch, ch, config.top_time_downsample, config.top_space_downsample)
        self.from_bottom_code = CausalConv3d(e, ch, (1, 1, 1))
        self.decoder_in = CausalConv3d(2 * ch, ch, (3, 3, 3))
        self.decoder_blocks = _res_stack(config)
        self.decoder_norm = ChannelNorm(ch)
        self.frame_up = _up_layers(ch, ch, 3, config.time_downsample, config.space_downsample)

    def _check_length(self, frames: Tensor) -> None:
        step = self.config.time_downsample
        if frames.ndim != 5 or frames.shape[1] % step or frames.shape[1] == 0:
            raise ValueError(f"the VQ-VAE encodes clips [B, T, 3, H, W] with T a positive multiple of "
                             f"time_downsample={step}, got {list(frames.shape)}")

    # ------------------------------------------------------------------ latents and codes
    def encode_latents(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames [B, T, 3, H, W] in [0, 1] -> pre-quantisation (bottom [B, E, Tb, hb, wb], top [B, E, Tt, ht, wt]).

        T must be a multiple of dt; Tt = floor(Tb / rt) (a trailing partial top step is dropped)."""
        self._check_length(frames)
        h = self.bottom_encoder(_channels_first(frames) - 0.5)  # [B, Ch, Tb, hb, wb]
        z_bottom = self.to_bottom_code(F.relu(self.bottom_norm(h)))
        z_top = self.to_top_code(F.relu(self.top_norm(self.top_encoder(h))))  # [B, E, Tt, ht, wt]
        return z_bottom, z_top

    @staticmethod
    def _quantize(quantizer: VectorQuantizer, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """z [B, E, T', h, w] -> (z_q straight-through, codes [B, T', h, w], commitment loss, stats)."""
        b, e, t, h, w = z.shape
        flat = z.transpose(1, 2).reshape(b * t, e, h, w)  # every time slice is an [E, h, w] map for the quantizer
        z_q, codes, commit, stats = quantizer(flat)
        return z_q.view(b, t, e, h, w).transpose(1, 2), codes.view(b, t, h, w), commit, stats

    @staticmethod
    def _nearest(quantizer: VectorQuantizer, z: Tensor) -> Tensor:
        b, e, t, h, w = z.shape
        return quantizer.nearest(z.float().permute(0, 2, 3, 4, 1).reshape(-1, e)).view(b, t, h, w)

    @torch.no_grad()
    def encode_codes(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames [B, T, 3, H, W] -> (bottom codes [B, Tb, hb, wb], top codes [B, Tt, ht, wt]) int64.
        Never updates the codebooks."""
        z_bottom, z_top = self.encode_latents(frames)
        return self._nearest(self.bottom_quantizer, z_bottom), self._nearest(self.top_quantizer, z_top)

    def decode_latents(self, q_bottom: Tensor, q_top: Tensor) -> Tensor:
        """Quantised bottom [B, E, Tb, hb, wb] and top [B, E, >= ceil(Tb / rt), ht, wt] latents -> frames
        [B, Tb * dt, 3, H, W] (unclamped, ~[0, 1])."""
        tb = q_bottom.shape[2]
        top = _run_ups(self.top_up, q_top)[:, :, :tb]  # [B, Ch, Tb, hb, wb]: bottom step j reads top step j // rt
        if top.shape[2] != tb:
            raise ValueError(f"{tb} bottom steps need {math.ceil(tb / self.config.top_time_downsample)} top steps, "
                             f"got {q_top.shape[2]}")
        x = self.decoder_in(torch.cat([self.from_bottom_code(q_bottom), top], dim=1))
        for block in self.decoder_blocks:
            x = block(x, None)
        x = _run_ups(self.frame_up, F.relu(self.decoder_norm(x)))  # [B, 3, T, H, W]
        return _channels_first(x) + 0.5

    @torch.no_grad()
    def decode_codes(self, bottom: Tensor, top: Tensor) -> Tensor:
        """bottom codes [B, Tb, hb, wb] + top codes [B, >= ceil(Tb / rt), ht, wt] -> frames [B, Tb * dt, 3, H, W]
        in [0, 1]."""
        q_bottom = self.bottom_quantizer.lookup(bottom).permute(0, 4, 1, 2, 3)
        q_top = self.top_quantizer.lookup(top).permute(0, 4, 1, 2, 3)
        return self.decode_latents(q_bottom, q_top).float().clamp(0, 1)

    # ------------------------------------------------------------------ training
    def loss(self, frames: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """frames [B, T, 3, H, W] in [0, 1] -> (MSE + both commitment terms, metrics)."""
        z_bottom, z_top = self.encode_latents(frames)
        q_bottom, _, commit_b, stats_b = self._quantize(self.bottom_quantizer, z_bottom)
        q_top, _, commit_t, stats_t = self._quantize(self.top_quantizer, z_top)
        if self.training and self.config.bottom_mask_prob > 0:
            keep = torch.rand(q_bottom.shape[0], device=q_bottom.device) >= self.config.bottom_mask_prob
            q_bottom = q_bottom * keep.to(q_bottom.dtype)[:, None, None, None, None]
        rec = self.decode_latents(q_bottom, q_top)
        mse = F.mse_loss(rec.float(), frames.float())
        with torch.no_grad():
            clamped = F.mse_loss(rec.detach().float().clamp(0, 1), frames.float())
            psnr = float(10 * torch.log10(1.0 / clamped.clamp_min(1e-10)))
        metrics: dict[str, Any] = {"mse": float(mse.detach()), "psnr": psnr,
                                   "commit_bottom": float(commit_b.detach()), "commit_top": float(commit_t.detach())}
        metrics.update({f"{k}_bottom": v for k, v in stats_b.items()})
        metrics.update({f"{k}_top": v for k, v in stats_t.items()})
        return mse + commit_b + commit_t, metrics
