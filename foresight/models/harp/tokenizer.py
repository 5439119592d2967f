"""HARP stage 1: a VQ-GAN that turns one frame into a grid of discrete codes and back.

Axis legend: N frames (batch of single images), E code width, h, w code grid, K codebook size.

Loss (Esser et al. 2021, as used by HARP):
    L = l1 |x - x'| + l2 (x - x')^2 + p LPIPS(x, x') + beta ||z_e - sg(z_q)||^2
        + [step >= disc_start] (lambda * g_loss + d_loss)
with lambda = disc_weight * ||grad_W L_rec|| / (||grad_W g_loss|| + 1e-4) at the decoder's last conv W.

How the GAN fits the one-optimizer Trainer: ``loss`` returns the SUM of the generator objective and the
discriminator's hinge loss. The two terms touch disjoint parameters:
* the generator's adversarial term runs the discriminator with DETACHED parameters (``call_frozen``), so its
  gradient reaches the reconstruction (and through it encoder/decoder) but never the discriminator;
* the discriminator's hinge loss sees DETACHED reconstructions, so its gradient reaches only the discriminator.
One backward of the sum therefore gives each network exactly the gradient of its own objective, and one AdamW
step over the union of the parameters is a simultaneous generator / discriminator update (no gradient reversal,
no second optimizer, no extra state in checkpoints).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.models.harp.config import HarpConfig
from foresight.nn.conv import Downsample, ResBlock, SpatialAttention, Upsample, group_norm
from foresight.nn.discriminator import PatchDiscriminator, call_frozen, hinge_d_loss
from foresight.nn.quantizer import VectorQuantizer

__all__ = ["Encoder", "Decoder", "VQGAN"]


class Encoder(nn.Module):
    """[N, 3, H, W] in [-1, 1] -> [N, E, H/d, W/d] with d = 2**(len(channel_mult)-1)."""

    def __init__(self, config: HarpConfig):
        super().__init__()
        ch, mult = config.channels, config.channel_mult
        self.conv_in = nn.Conv2d(3, ch * mult[0], 3, padding=1)
        blocks: list[nn.Module] = []
        in_ch = ch * mult[0]
        for level, m in enumerate(mult):
            for _ in range(config.res_blocks):
                blocks.append(ResBlock(in_channels=in_ch, out_channels=ch * m))
                in_ch = ch * m
            if level < len(mult) - 1:
                blocks.append(Downsample(in_ch))
        # attention only at the lowest resolution, where H*W is small
        blocks += [ResBlock(in_channels=in_ch), SpatialAttention(in_ch), ResBlock(in_channels=in_ch)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, config.code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Decoder(nn.Module):
    """[N, E, h, w] -> [N, 3, h*d, w*d] (unbounded; ~[-1, 1])."""

    def __init__(self, config: HarpConfig):
        super().__init__()
        ch, mult = config.channels, config.channel_mult
        in_ch = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.code_dim, in_ch, 3, padding=1)
        blocks: list[nn.Module] = [ResBlock(in_channels=in_ch), SpatialAttention(in_ch), ResBlock(in_channels=in_ch)]
        for level in reversed(range(len(mult))):
            for _ in range(config.res_blocks):
                blocks.append(ResBlock(in_channels=in_ch, out_channels=ch * mult[level]))
                in_ch = ch * mult[level]
            if level > 0:
                blocks.append(Upsample(in_ch))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, 3, 3, padding=1)

    @property
    def last_layer(self) -> Tensor:
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(z)))))


class VQGAN(nn.Module):
    """Frame tokenizer. ``encode_codes``/``decode_codes`` for inference, ``loss`` for stage-1 training."""

    def __init__(self, config: HarpConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(num_codes=config.codebook_size, code_dim=config.code_dim, beta=config.beta,
                                         decay=config.ema_decay, dead_threshold=config.dead_code_threshold)
        self.decoder = Decoder(config)
        self.discriminator = (PatchDiscriminator(channels=config.disc_channels, layers=config.disc_layers)
                              if config.disc_weight > 0 else None)
        # Stage-1 training steps taken (loss calls in training mode); decides when the GAN switches on. A buffer,
        # so it is saved with the weights and a resumed run continues the schedule.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._lpips: list[nn.Module] = []  # held outside the module tree: external weights, never checkpointed

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode_codes(self, frames: Tensor) -> Tensor:
        """frames [N, 3, H, W] in [0, 1] -> codes [N, h, w] int64. Never updates the codebook."""
        z = self.encoder(frames * 2 - 1).float()  # [N, E, h, w]
        n, e, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, e)).view(n, h, w)

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """z_q [N, E, h, w] -> frames [N, 3, H, W] (unclamped, ~[0, 1])."""
        return (self.decoder(z_q) + 1) / 2

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes [N, h, w] -> frames [N, 3, H, W] in [0, 1]."""
        z_q = self.quantizer.codes_to_latent(codes).contiguous(memory_format=torch.channels_last)  # NHWC convs: faster
        return self.decode_latent(z_q).float().clamp(0, 1).contiguous()

    def reconstruct(self, frames: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """frames [N, 3, H, W] in [0, 1] -> (reconstruction [N, 3, H, W] unclamped, commit loss, codebook stats)."""
        z_q, _, commit, stats = self.quantizer(self.encoder(frames * 2 - 1))
        return self.decode_latent(z_q), commit, stats

    # ------------------------------------------------------------------ training
    def perceptual(self, rec: Tensor, target: Tensor) -> Tensor:
        if not self._lpips:
            from foresight.metrics.lpips import LPIPS
            from foresight.metrics.weights import WeightsNotFoundError

            try:
                self._lpips.append(LPIPS(net=self.config.lpips_net))
            except WeightsNotFoundError as e:
                raise RuntimeError(
                    f"HARP's tokenizer loss needs LPIPS weights (perceptual_weight={self.config.perceptual_weight}) "
                    f"and none were found: {e}. Provide them, or train with perceptual_weight=0.") from e
        lpips = self._lpips[0].to(rec.device)
        return lpips(rec, target).mean()

    def _adaptive_weight(self, rec_loss: Tensor, g_loss: Tensor) -> Tensor:
        w = self.decoder.last_layer
        g_rec = torch.autograd.grad(rec_loss, w, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_loss, w, retain_graph=True)[0]
        weight = g_rec.norm() / (g_gan.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.config.disc_weight

    def loss(self, frames: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """frames [N, 3, H, W] in [0, 1] -> (scalar loss, metrics). Counts a step in training mode."""
        cfg = self.config
        training = self.training and torch.is_grad_enabled()
        rec, commit, stats = self.reconstruct(frames)  # [N, 3, H, W]
        rec_loss = cfg.l1_weight * (rec - frames).abs().mean()
        if cfg.l2_weight:
            rec_loss = rec_loss + cfg.l2_weight * F.mse_loss(rec, frames)
        metrics: dict[str, Any] = {"l1": float((rec - frames).abs().mean().detach())}
        if cfg.perceptual_weight > 0:
            perc = self.perceptual(rec, frames)
            rec_loss = rec_loss + cfg.perceptual_weight * perc
            metrics["lpips"] = float(perc.detach())
        with torch.no_grad():
            mse = F.mse_loss(rec.float().clamp(0, 1), frames.float())
            metrics["psnr"] = float(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
        loss = rec_loss + commit
        metrics.update(commit=float(commit.detach()), **{k: v for k, v in stats.items()})
        disc = self.discriminator
        if disc is not None:
            gan_on = int(self.step) >= cfg.disc_start
            if gan_on:
                g_loss = -call_frozen(disc, rec).mean()
                if training:
                    weight = self._adaptive_weight(rec_loss, g_loss)
                else:
                    weight = torch.tensor(cfg.disc_weight, device=frames.device)
                d_loss = hinge_d_loss(disc(frames.detach()), disc(rec.detach()))
                loss = loss + weight * g_loss + d_loss
                metrics.update(g_loss=float(g_loss.detach()), d_loss=float(d_loss.detach()),
                               gan_weight=float(weight))
            else:
                # Zero-valued use of every discriminator parameter: DDP then sees them all take part.
                loss = loss + 0.0 * sum(p.sum() for p in disc.parameters())
        if training:
            self.step += 1
        return loss, metrics
