"""VideoGPT (Yan et al. 2021): a VQ-VAE over clips and a GPT prior over its latent grid, action-conditioned.

Axis legend::

    B  batch (e.g. candidate action sequences)    S  samples    C  context frames    F  trained future frames
    T  frames      A  action dim      dt, ds  time / space downsampling of the VQ-VAE
    T' = T / dt  latent steps      h = w = H / ds  codes per side      N = h*w      E  code width

Stages: ``vqvae`` (the clip VQ-VAE, on whole clips of C + F frames) then ``prior`` (VQ-VAE frozen, codes of every
clip cached once by ``stage_dataset``). See vqvae.py and prior.py for the details of each part.

Prediction: the causal encoder turns the C context frames into the codes of the first C/dt latent steps (exactly
the prefix of a whole clip's codes, see vqvae.py); the prior samples the codes of ``ceil(T / dt)`` future steps,
conditioned on that prefix, on cross-attention to ResNet features of the context frames, and on the actions
(conditional LayerNorm); the decoder turns context + future codes into frames, of which the future ones are
returned. A horizon that is not a multiple of dt holds the last action for the rest of the last latent step.

    model = foresight.get_model_class("videogpt")(foresight.preset(VideoGPTConfig, "tiny"))
    video = model.predict(context, actions, num_samples=2, seed=0)   # [B, 2, T, 3, H, W]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from foresight.data.cache import CachedCodes, code_dtype, encode_clips
from foresight.models.videogpt.config import VideoGPTConfig
from foresight.models.videogpt.prior import LatentPrior, sample_future_codes
from foresight.models.videogpt.vqvae import ClipVQVAE
from foresight.registry import register_model
from foresight.world_model import WorldModel, as_float_frames

__all__ = ["VideoGPT"]


@register_model("videogpt")
class VideoGPT(WorldModel):
    """VideoGPT world model. ``embed`` / ``predict_embeddings`` work in code space (codebook vectors)."""

    config_class = VideoGPTConfig
    stages = ("vqvae", "prior")
    stage_modules = {"vqvae": "vqvae", "prior": "prior"}  # codebook: EMA buffers

    def __init__(self, config: VideoGPTConfig):
        config.validate()
        super().__init__(config)
        self.vqvae = ClipVQVAE(config)
        self.prior = LatentPrior(config)

    # ------------------------------------------------------------------ stages
    # ------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode(self, frames: Tensor, *, batch_size: int = 64) -> Tensor:
        """clips [B, T, 3, H, W] in [0, 1] (T a multiple of dt) -> codes [B, T/dt, h, w] int64 (frozen VQ-VAE)."""
        codes = [self.vqvae.encode_codes(frames[i:i + batch_size]) for i in range(0, frames.shape[0], batch_size)]
        return torch.cat(codes)

    @torch.no_grad()
    def decode(self, codes: Tensor, *, batch_size: int = 64) -> Tensor:
        """codes [B, T', h, w] -> frames [B, T' * dt, 3, H, W] in [0, 1]."""
        return torch.cat([self.vqvae.decode_codes(codes[i:i + batch_size])
                          for i in range(0, codes.shape[0], batch_size)])

    def latent_actions(self, actions: Tensor) -> Tensor:
        """Future actions [B, T, A] -> action vectors of the ceil(T/dt) future latent steps [B, T', dt*A]: the dt
        actions leading into a step's frames, concatenated in time order (the last action held to fill a step)."""
        dt = self.config.time_downsample
        b, t, a = actions.shape
        steps = math.ceil(t / dt)
        if steps * dt > t:
            actions = torch.cat([actions, actions[:, -1:].expand(b, steps * dt - t, a)], dim=1)
        return actions.reshape(b, steps, dt * a)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        if self.stage == "vqvae":
            return self._vqvae_loss(batch)
        return self._prior_loss(batch)

    def _vqvae_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        return self.vqvae.loss(self.clip_frames(batch))

    def _prior_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        c, f, cfg = self.context_frames, self.future_frames, self.config
        steps = cfg.latent_steps
        if "codes" in batch:
            codes = batch["codes"].to(self.device).long()
        elif "frames" in batch:
            frames = as_float_frames(batch["frames"]).to(self.device)
            if frames.ndim != 5 or frames.shape[1] < c + f:
                raise ValueError(f"batch['frames']: expected [B, >= {c + f}, 3, H, W], got {list(frames.shape)}")
            codes = self.encode(frames[:, :c + f])
        else:
            raise ValueError("the prior stage expects a batch with 'codes' (from stage_dataset) or 'frames'")
        if codes.ndim != 4 or codes.shape[1] < steps or codes.shape[2:] != (cfg.grid, cfg.grid):
            raise ValueError(f"expected codes [B, >= {steps}, {cfg.grid}, {cfg.grid}], got {list(codes.shape)}")
        codes = codes[:, :steps]
        context = batch["context"] if "context" in batch else batch["frames"][:, :c]
        context = as_float_frames(context).to(self.device)
        step_actions = None
        if self.action_dim > 0:
            if batch.get("actions") is None:
                raise ValueError(f"this VideoGPT model is action-conditioned: the batch needs 'actions' "
                                 f"[B, C+F-1, {self.action_dim}]")
            actions = batch["actions"].to(self.device).float()[:, c - 1:c - 1 + f]  # [B, F, A] future actions
            if actions.ndim != 3 or actions.shape[1] != f or actions.shape[2] != self.action_dim:
                raise ValueError(f"expected actions [B, >= {c + f - 1}, {self.action_dim}], "
                                 f"got {list(batch['actions'].shape)}")
            step_actions = self.latent_actions(actions)  # [B, F', dt*A]
        logits = self.prior(codes, context, step_actions)  # [B, F'*N, K]
        target = codes[:, cfg.context_steps:].flatten(1)  # [B, F'*N]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"ce": float(loss.detach()), "code_accuracy": float(acc)}

    def stage_dataset(self, dataset: Any, stage: str | None = None) -> Any:
        """Prior stage: encode every clip once with the frozen VQ-VAE (a `CachedCodes` of codes [T', h, w],
        actions, uint8 context pixels and task). Augmentation of the source is frozen at caching time."""
        if (stage or self.stage) != "prior":
            return dataset
        return self.cache_codes(dataset)

    @torch.no_grad()
    def cache_codes(self, dataset: Any, *, batch_size: int = 32) -> CachedCodes:
        c, length = self.context_frames, self.context_frames + self.future_frames
        dtype = code_dtype(self.config.codebook_size)

        def encode(frames: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:  # frames [b, C+F, 3, H, W]
            return {"codes": self.encode(frames.to(self.device)).to(dtype),
                    "context": (frames[:, :c] * 255).round().to(torch.uint8)}

        was_training = self.training
        self.eval()
        try:
            out = encode_clips(dataset, encode, length=length, batch_size=batch_size, desc="VideoGPT: caching codes")
        finally:
            self.train(was_training)
        return CachedCodes(out.pop("codes"), out)

    # ------------------------------------------------------------------ prediction
    def _sample(self, context_frames: Tensor, actions: Tensor | None, num_samples: int,
                generator: torch.Generator | None, horizon: int, use_cache: bool = True) -> tuple[Tensor, Tensor]:
        """-> (context codes [B, C/dt, h, w], future codes [B, S, ceil(T/dt), h, w])."""
        b = context_frames.shape[0]
        shared = b > 1 and (context_frames.stride(0) == 0 or bool((context_frames == context_frames[:1]).all()))
        ctx_codes = self.encode(context_frames[:1] if shared else context_frames)  # a shared context: once
        ctx_codes = ctx_codes.expand(b, -1, -1, -1) if shared else ctx_codes
        ctx_frames = context_frames[:1].expand_as(context_frames) if shared else context_frames
        step_actions = self.latent_actions(actions) if actions is not None else None
        future = sample_future_codes(self.prior, ctx_codes, ctx_frames, step_actions,
                                     steps=math.ceil(horizon / self.config.time_downsample), num_samples=num_samples,
                                     top_k=self.config.top_k, temperature=self.config.temperature,
                                     generator=generator, use_cache=use_cache)
        return ctx_codes, future

    def decode_future(self, context_codes: Tensor, future_codes: Tensor, horizon: int) -> Tensor:
        """context codes [B, C/dt, h, w] + future codes [B, S, T', h, w] -> future frames [B, S, horizon, 3, H, W].

        Up to F/dt future steps decode in one window (the decoder is causal: a prefix of steps decodes to a prefix
        of the video). Each later step decodes in the window the prior sampled it in (context + the last F/dt
        steps) and contributes that window's last dt frames."""
        b, s, steps = future_codes.shape[:3]
        lf, c = self.config.future_steps, self.context_frames
        ctx = context_codes.repeat_interleave(s, dim=0)  # [M, C/dt, h, w]
        fut = future_codes.flatten(0, 1)  # [M, T', h, w]
        parts = [self.decode(torch.cat([ctx, fut[:, :min(steps, lf)]], dim=1))[:, c:]]
        dt = self.config.time_downsample
        for k in range(lf, steps):
            parts.append(self.decode(torch.cat([ctx, fut[:, k - lf + 1:k + 1]], dim=1))[:, -dt:])
        frames = torch.cat(parts, dim=1)[:, :horizon]  # [M, horizon, 3, H, W]
        return frames.unflatten(0, (b, s))

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        ctx_codes, future = self._sample(context_frames, actions, num_samples, generator, horizon)
        return self.decode_future(ctx_codes, future, horizon)

    @torch.no_grad()
    def predict_codes(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                      horizon: int | None = None, seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Sampled future codes [B, S, ceil(T/dt), h, w] (no decoding). ``use_cache=False`` recomputes every step."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(None, seed)
        was_training = self.training
        self.eval()
        try:
            return self._sample(context_frames, actions, num_samples, generator, horizon, use_cache=use_cache)[1]
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ model-space embeddings (planning costs)
    def code_embedding(self, codes: Tensor) -> Tensor:
        """codes [..., h, w] -> [..., N*E] codebook vectors (raster order, flattened)."""
        return self.vqvae.quantizer.lookup(codes).flatten(-3)

    def embed(self, frames: Tensor) -> Tensor:
        """Frames [..., 3, H, W] -> codebook vectors [..., N*E] of the frame held still.

        A latent step covers dt frames, so a single image has no codes of its own: each frame is encoded as a
        still clip of C + dt copies of itself and the codes of its first latent step after the context
        positions are returned (the position at which the prior samples the first future step)."""
        size = self.image_size
        if not isinstance(frames, Tensor) or frames.ndim < 3 or tuple(frames.shape[-3:]) != (3, size, size):
            got = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames: expected [..., 3, {size}, {size}] in [0, 1], got {got}")
        lead = frames.shape[:-3]
        length = self.context_frames + self.config.time_downsample
        still = frames.reshape(-1, 1, *frames.shape[-3:]).expand(-1, length, -1, -1, -1)
        codes = self.encode(still.to(self.device).float())[:, -1]  # [n, h, w]
        return self.code_embedding(codes).view(*lead, -1)

    @torch.no_grad()
    def predict_embeddings(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                           horizon: int | None = None, generator: torch.Generator | None = None,
                           seed: int | None = None) -> Tensor:
        """Like ``predict`` but skips the decoder: [B, S, T, N*E], frame t carrying the codebook vectors of the
        latent step it belongs to (step t // dt). The same seed samples the same codes as ``predict``, which
        decodes them; compare with ``embed(goal_image)``."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(generator, seed)
        was_training = self.training
        self.eval()
        try:
            _, future = self._sample(context_frames, actions, num_samples, generator, horizon)
        finally:
            self.train(was_training)
        per_frame = torch.arange(horizon, device=future.device) // self.config.time_downsample
        return self.code_embedding(future[:, :, per_frame])
