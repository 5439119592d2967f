"""Reference predictors: the copy-last-frame baseline and a small deterministic conv predictor.

``copy_last`` is the number every learned model must beat: it predicts that nothing moves.
``conv`` is a compact action-conditioned encoder / action-modulated latent / decoder that rolls out one frame
at a time (in the spirit of the deterministic baselines in the video-prediction papers). It is also the
smallest real model for testing trainers, planners and checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.nn.conv import group_norm
from foresight.registry import register_model
from foresight.world_model import WorldModel


@dataclass
class CopyLastConfig:
    """Config of the copy-last-frame baseline."""

    image_size: int = 64
    action_dim: int = 4
    context_frames: int = 1
    future_frames: int = 10
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}, "quick": {}, "paper": {}}


@register_model("copy_last")
class CopyLastFrame(WorldModel):
    """Predicts the last context frame for every future step (the "nothing moves" baseline)."""

    config_class = CopyLastConfig

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        last = context_frames[:, -1]  # [B, 3, H, W]
        return last[:, None, None].expand(-1, num_samples, horizon, -1, -1, -1).clone()

    def loss(self, batch):
        raise RuntimeError("copy_last has nothing to train")


@dataclass
class ConvPredictorConfig:
    """Config of the deterministic conv predictor."""

    image_size: int = 64
    action_dim: int = 4
    context_frames: int = 1
    future_frames: int = 10
    channels: int = 32          # width of the first conv level; doubles per level
    levels: int = 3             # stride-2 downsamplings
    latent_channels: int = 64   # channels of the recurrent latent grid
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 16, "channels": 8, "levels": 2, "latent_channels": 16, "future_frames": 3},
        "quick": {"channels": 32, "levels": 3, "latent_channels": 64},
        "paper": {"channels": 64, "levels": 4, "latent_channels": 256},
    }


@register_model("conv")
class ConvPredictor(WorldModel):
    """Encoder -> latent grid -> (latent, action) -> next latent -> decoder, rolled out autoregressively.

    The next frame is predicted as a residual on the previous one, which makes "copy the last frame" the
    model's starting point instead of something it has to learn.
    """

    config_class = ConvPredictorConfig

    def __init__(self, config: ConvPredictorConfig):
        super().__init__(config)
        c = config.channels
        enc, dec = [], []
        in_ch = 3 * config.context_frames
        for i in range(config.levels):
            out_ch = c * 2**i
            enc += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False), group_norm(out_ch, 8, eps=1e-5), nn.SiLU()]
            in_ch = out_ch
        enc += [nn.Conv2d(in_ch, config.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        self.action_proj = nn.Linear(max(config.action_dim, 1), 2 * config.latent_channels)
        self.transition = nn.Sequential(
            nn.Conv2d(config.latent_channels, config.latent_channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(config.latent_channels, config.latent_channels, 3, padding=1),
        )
        in_ch = config.latent_channels
        for i in reversed(range(config.levels)):
            out_ch = c * 2**i
            dec += [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False), group_norm(out_ch, 8, eps=1e-5), nn.SiLU()]
            in_ch = out_ch
        dec += [nn.Conv2d(in_ch, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def feature_dim(self) -> int:
        return self.config.latent_channels

    def _encode(self, context: Tensor) -> Tensor:
        # context [B, C, 3, H, W] -> latent [B, L, h, w]
        return self.encoder(context.flatten(1, 2) * 2 - 1)

    def _step(self, latent: Tensor, action: Tensor | None) -> Tensor:
        if action is None:
            action = latent.new_zeros(latent.shape[0], 1)
        scale, shift = self.action_proj(action)[..., None, None].chunk(2, dim=1)  # [B, L, 1, 1] each
        return latent + self.transition(latent * (1 + scale) + shift)

    def _rollout(self, context: Tensor, actions: Tensor | None, horizon: int) -> Tensor:
        latent = self._encode(context)
        frame = context[:, -1]
        frames = []
        for t in range(horizon):
            latent = self._step(latent, None if actions is None else actions[:, t])
            frame = (frame + self.decoder(latent)).clamp(0, 1)  # residual on the previous frame
            frames.append(frame)
        return torch.stack(frames, dim=1)  # [B, T, 3, H, W]

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        pred = self._rollout(context_frames, actions, horizon)
        return pred[:, None].expand(-1, num_samples, -1, -1, -1, -1).clone()

    def loss(self, batch):
        frames = batch["frames"]  # [B, C+F, 3, H, W]
        c = self.context_frames
        future = frames[:, c:]
        actions = batch.get("actions")
        actions = actions[:, c - 1:] if (actions is not None and self.action_dim > 0) else None
        pred = self._rollout(frames[:, :c], actions, future.shape[1])
        mse = F.mse_loss(pred, future)
        return mse, {"mse": float(mse.detach())}

    def features(self, frames: Tensor, actions: Tensor | None = None) -> Tensor:
        # Per-frame encoding of a sliding window of context_frames frames: causal by construction.
        b, t = frames.shape[:2]
        c = self.context_frames
        padded = torch.cat([frames[:, :1].expand(-1, c - 1, -1, -1, -1), frames], dim=1)
        windows = padded.unfold(1, c, 1).permute(0, 1, 5, 2, 3, 4)  # [B, T, C, 3, H, W]
        latent = self._encode(windows.flatten(0, 1))  # [B*T, L, h, w]
        return latent.mean(dim=(2, 3)).view(b, t, -1)

    def embed(self, frames: Tensor) -> Tensor:
        lead = frames.shape[:-3]
        x = frames.reshape(-1, 1, *frames.shape[-3:]).expand(-1, self.context_frames, -1, -1, -1)
        return self._encode(x).flatten(1).view(*lead, -1)
