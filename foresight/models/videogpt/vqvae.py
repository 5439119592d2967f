"""VideoGPT stage 1: a VQ-VAE that turns a clip into a grid of discrete codes over space and time, and back.

Axis legend::

    B  clips      T  frames      T' = T / dt  latent steps      h = w = H / ds  codes per side
    Ch  channels  E  code width  K  codebook size

Architecture (VideoGPT Sec. 3, App. A.1): strided 3D convolutions downsample time by ``dt`` and space by ``ds``,
then attention residual blocks (norm, ReLU, 3x3x3 conv, norm, ReLU, 1x1x1 conv, norm, ReLU, axial attention,
Fig. 4), then a 1x1x1 conv to the code width and the EMA quantizer (`foresight.nn.quantizer.VectorQuantizer`).
The decoder mirrors it with 3D transposed convolutions. Learned spatio-temporal position embeddings are shared
by every axial attention of the encoder and the decoder. Frames are scaled to [-0.5, 0.5]; the reconstruction
loss is the MSE divided by the data variance (the seed's "normalised MSE"), estimated once from the first
training batch and saved with the weights.

What differs from the seed, and why: both networks are CAUSAL IN TIME at the granularity of latent steps.
Latent step j of the encoder sees frames < (j + 1) * dt only (time padding on the past side, masked attention
along T); frames of latent step j of the decoder come from latent steps <= j only (time kernels of the
transposed convolutions equal their stride, causal convs and masked attention before them). So

* the codes of the context steps are a function of the context frames alone: ``encode(context)`` at prediction
  time gives exactly the prefix the prior was trained on (with the seed's non-causal encoder the context codes
  of a training clip would depend on its future frames, which are unknown at prediction time);
* decoding a prefix of a latent grid gives a prefix of the video, so a horizon shorter than ``future_frames``
  decodes only the steps it needs, and nothing decoded depends on latent steps after it.
The normalisation is a per-position LayerNorm over channels (the seed says LayerNorm; BatchNorm or GroupNorm
would mix statistics across time and break the causality, and make a clip's codes depend on its batch).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.models.videogpt.config import VideoGPTConfig
from foresight.nn.quantizer import VectorQuantizer

__all__ = ["CausalConv3d", "AxialAttention", "AttentionResBlock", "ClipEncoder", "ClipDecoder", "ClipVQVAE"]


class CausalConv3d(nn.Module):
    """Conv3d over ``[B, Ch, T, H, W]``, padded on the past side in time and symmetrically in space.

    With kernel ``kt`` and stride ``st`` in time, output step t sees input steps ``t*st - (kt - st) .. t*st + st - 1``:
    never an input step after the ``st`` steps it summarises.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (3, 3, 3),
                 stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        (kt, kh, kw), (st, sh, sw) = kernel, stride
        if kt < st or (kh - sh) % 2 or (kw - sw) % 2:
            raise ValueError(f"CausalConv3d: unsupported kernel {kernel} with stride {stride}")
        self.pad = ((kw - sw) // 2, (kw - sw) // 2, (kh - sh) // 2, (kh - sh) // 2, kt - st, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of every (t, h, w) position: ``[B, Ch, T, H, W] -> same``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class AxialPositions(nn.Module):
    """Learned factorised position embeddings ``time[T'] + row[h] + col[w]`` -> ``[T', h, w, Ch]``."""

    def __init__(self, *, steps: int, grid: int, channels: int):
        super().__init__()
        self.time = nn.Parameter(torch.randn(steps, channels) * 0.02)
        self.row = nn.Parameter(torch.randn(grid, channels) * 0.02)
        self.col = nn.Parameter(torch.randn(grid, channels) * 0.02)

    def forward(self, steps: int) -> Tensor:
        if steps > self.time.shape[0]:
            raise ValueError(f"at most {self.time.shape[0]} latent steps (context_frames + future_frames), got {steps}")
        return self.time[:steps, None, None] + self.row[None, :, None] + self.col[None, None, :]


class AxialAttention(nn.Module):
    """Multi-head self-attention along T (causal), H and W separately, the three outputs summed.

    forward(x: ``[B, T', h, w, Ch]`` channels last, pos ``[T', h, w, Ch]``) -> ``[B, T', h, w, Ch]``.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(channels, 3 * channels) for _ in range(3))
        self.proj = nn.ModuleList(nn.Linear(channels, channels) for _ in range(3))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        x = x + pos.to(x.dtype)
        ch, heads = x.shape[-1], self.heads
        out = 0
        for axis, (qkv, proj) in enumerate(zip(self.qkv, self.proj)):
            dim = axis + 1  # 1 = T, 2 = H, 3 = W
            h = x.movedim(dim, -2)  # [..., L, Ch] with L the attended axis
            lead, n = h.shape[:-2], h.shape[-2]
            q, k, v = qkv(h).reshape(-1, n, 3, heads, ch // heads).permute(2, 0, 3, 1, 4)  # [N, Hd, L, Dh] x3
            o = F.scaled_dot_product_attention(q, k, v, is_causal=axis == 0 and n > 1)  # future steps hidden
            o = o.transpose(1, 2).reshape(*lead, n, ch).movedim(-2, dim)
            out = out + proj(o)
        return out


class AttentionResBlock(nn.Module):
    """``x + [norm, ReLU, conv3, norm, ReLU, conv1, norm, ReLU, axial attention](x)`` (VideoGPT Fig. 4)."""

    def __init__(self, channels: int, res_channels: int, heads: int, attention: bool):
        super().__init__()
        self.norm1 = ChannelNorm(channels)
        self.conv1 = CausalConv3d(channels, res_channels, (3, 3, 3))
        self.norm2 = ChannelNorm(res_channels)
        self.conv2 = CausalConv3d(res_channels, channels, (1, 1, 1))
        self.norm3 = ChannelNorm(channels) if attention else None
        self.attn = AxialAttention(channels, heads) if attention else None

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        if self.attn is not None:
            h = self.attn(F.relu(self.norm3(h)).movedim(1, -1), pos).movedim(-1, 1)
        return x + h


def _resampling_plan(config: VideoGPTConfig) -> list[tuple[int, int]]:
    """(time stride, space stride) of each resampling layer: both halve until each has its factor."""
    n_t, n_s = int(math.log2(config.time_downsample)), int(math.log2(config.space_downsample))
    return [(2 if i < n_t else 1, 2 if i < n_s else 1) for i in range(max(n_t, n_s))]


class ClipEncoder(nn.Module):
    """``[B, 3, T, H, W]`` in [-0.5, 0.5] -> ``[B, E, T', h, w]`` pre-quantisation latents (causal in time)."""

    def __init__(self, config: VideoGPTConfig):
        super().__init__()
        ch = config.hidden
        downs: list[nn.Module] = []
        in_ch = 3
        for st, ss in _resampling_plan(config):
            downs.append(CausalConv3d(in_ch, ch, (4 if st == 2 else 3, 4 if ss == 2 else 3, 4 if ss == 2 else 3),
                                      (st, ss, ss)))
            in_ch = ch
        self.downs = nn.ModuleList(downs)
        self.conv_last = CausalConv3d(in_ch, ch, (3, 3, 3))
        self.blocks = nn.ModuleList(AttentionResBlock(ch, config.res_channels, config.vq_heads, config.axial_attention)
                                    for _ in range(config.res_layers))
        self.norm_out = ChannelNorm(ch)
        self.to_code = CausalConv3d(ch, config.code_dim, (1, 1, 1))

    def forward(self, x: Tensor, positions: AxialPositions) -> Tensor:
        for i, down in enumerate(self.downs):
            x = down(x) if i == 0 else down(F.relu(x))
        x = self.conv_last(F.relu(x) if self.downs else x)  # [B, Ch, T', h, w]
        pos = positions(x.shape[2])
        for block in self.blocks:
            x = block(x, pos)
        return self.to_code(F.relu(self.norm_out(x)))


class ClipDecoder(nn.Module):
    """``[B, E, T', h, w]`` -> ``[B, 3, T, H, W]`` (unbounded, ~[-0.5, 0.5]); frames of step j read steps <= j."""

    def __init__(self, config: VideoGPTConfig):
        super().__init__()
        ch = config.hidden
        self.from_code = CausalConv3d(config.code_dim, ch, (1, 1, 1))
        self.blocks = nn.ModuleList(AttentionResBlock(ch, config.res_channels, config.vq_heads, config.axial_attention)
                                    for _ in range(config.res_layers))
        self.norm_out = ChannelNorm(ch)
        plan = _resampling_plan(config)
        ups: list[nn.Module] = []
        for i, (st, ss) in enumerate(plan):
            out_ch = 3 if i == len(plan) - 1 else ch
            # time kernel == time stride: each latent step writes its own dt frames and no others (causal)
            ups.append(nn.ConvTranspose3d(ch, out_ch, (st, 4 if ss == 2 else 3, 4 if ss == 2 else 3),
                                          stride=(st, ss, ss), padding=(0, 1, 1)))
        self.ups = nn.ModuleList(ups)
        self.conv_out = CausalConv3d(ch, 3, (3, 3, 3)) if not plan else None  # no resampling at all

    def forward(self, z: Tensor, positions: AxialPositions) -> Tensor:
        x = self.from_code(z)
        pos = positions(x.shape[2])
        for block in self.blocks:
            x = block(x, pos)
        x = F.relu(self.norm_out(x))
        for i, up in enumerate(self.ups):
            x = up(x if i == 0 else F.relu(x))
        return self.conv_out(x) if self.conv_out is not None else x


def _to_channels_first(frames: Tensor) -> Tensor:
    return frames.permute(0, 2, 1, 3, 4)  # [B, T, 3, H, W] <-> [B, 3, T, H, W]


class ClipVQVAE(nn.Module):
    """Clip tokenizer. ``encode_codes`` / ``decode_codes`` for inference, ``loss`` for stage-1 training."""

    def __init__(self, config: VideoGPTConfig):
        super().__init__()
        self.config = config
        self.positions = AxialPositions(steps=config.latent_steps, grid=config.grid, channels=config.hidden)
        self.encoder = ClipEncoder(config)
        self.quantizer = VectorQuantizer(num_codes=config.codebook_size, code_dim=config.code_dim, beta=config.beta,
                                         decay=config.ema_decay, dead_threshold=config.dead_code_threshold)
        self.decoder = ClipDecoder(config)
        # Variance of the training frames in [-0.5, 0.5] (0 = not yet estimated): the NMSE's denominator.
        self.register_buffer("data_variance", torch.zeros(()))

    def _check_length(self, frames: Tensor) -> None:
        dt = self.config.time_downsample
        if frames.ndim != 5 or frames.shape[1] % dt or frames.shape[1] == 0:
            raise ValueError(f"the VQ-VAE encodes clips [B, T, 3, H, W] with T a positive multiple of "
                             f"time_downsample={dt}, got {list(frames.shape)}")

    # ------------------------------------------------------------------ latents and codes
    def encode_latent(self, frames: Tensor) -> Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> pre-quantisation latents [B, E, T', h, w]."""
        self._check_length(frames)
        return self.encoder(_to_channels_first(frames) - 0.5, self.positions)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """z [B, E, T', h, w] -> (z_q straight-through [B, E, T', h, w], codes [B, T', h, w], commit loss, stats)."""
        b, e, t, h, w = z.shape
        flat = z.transpose(1, 2).reshape(b * t, e, h, w)  # every latent step is a [E, h, w] map for the quantizer
        z_q, codes, commit, stats = self.quantizer(flat)
        return z_q.view(b, t, e, h, w).transpose(1, 2), codes.view(b, t, h, w), commit, stats

    @torch.no_grad()
    def encode_codes(self, frames: Tensor) -> Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> codes [B, T', h, w] int64. Never updates the codebook."""
        z = self.encode_latent(frames).float()  # [B, E, T', h, w]
        b, e, t, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 4, 1).reshape(-1, e)).view(b, t, h, w)

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """codes [B, T', h, w] -> quantised latents [B, E, T', h, w]."""
        return self.quantizer.lookup(codes).permute(0, 4, 1, 2, 3).contiguous()

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """z_q [B, E, T', h, w] -> frames [B, T, 3, H, W] (unclamped, ~[0, 1])."""
        return _to_channels_first(self.decoder(z_q, self.positions)) + 0.5

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes [B, T', h, w] -> frames [B, T' * dt, 3, H, W] in [0, 1]."""
        return self.decode_latent(self.codes_to_latent(codes)).float().clamp(0, 1)

    def reconstruct(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """frames [B, T, 3, H, W] -> (reconstruction [B, T, 3, H, W] unclamped, codes, commit loss, stats)."""
        z_q, codes, commit, stats = self.quantize(self.encode_latent(frames))
        return self.decode_latent(z_q), codes, commit, stats

    # ------------------------------------------------------------------ training
    def _variance(self, frames: Tensor, updating: bool) -> Tensor:
        if float(self.data_variance) > 0:
            return self.data_variance
        var = frames.detach().float().var().clamp_min(1e-6)
        if updating:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(var)  # every rank keeps the same denominator
                var = var / dist.get_world_size()
            self.data_variance.copy_(var)
        return var

    def loss(self, frames: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """frames [B, T, 3, H, W] in [0, 1] -> (NMSE + commitment, metrics)."""
        updating = self.training and torch.is_grad_enabled()
        rec, _, commit, stats = self.reconstruct(frames)
        mse = F.mse_loss(rec.float(), frames.float())
        nmse = mse / self._variance(frames, updating)
        with torch.no_grad():
            clamped = F.mse_loss(rec.detach().float().clamp(0, 1), frames.float())
            psnr = float(10 * torch.log10(1.0 / clamped.clamp_min(1e-10)))
        metrics: dict[str, Any] = {"nmse": float(nmse.detach()), "mse": float(mse.detach()), "psnr": psnr,
                                   "commit": float(commit.detach()), **stats}
        return nmse + commit, metrics
