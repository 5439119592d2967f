"""Video VQ-VAE (seeds/001): a hierarchical clip VQ-VAE and PixelCNN priors over its codes, action-conditioned.

Axis legend::

    B  batch (e.g. candidate action sequences)    S  samples    M = B * S rows sampled together
    C  context frames    F  trained future frames    T  predicted frames    A  action dim
    dt  frames per bottom step    rt  bottom steps per top step    tc, tcb  context top / bottom steps
    ht, hb  top / bottom codes per side     E  code width

Stages: ``vqvae`` (the two-level VQ-VAE on whole clips, vqvae.py), then ``top_prior`` and ``bottom_prior``
(pixelcnn.py), both trained on the frozen VQ-VAE's codes, which ``stage_dataset`` caches once per stage.

Prediction: the causal encoder turns the C context frames into the codes of the first tc top and tcb bottom steps
(exactly the prefix of a whole clip's codes, see vqvae.py). The future is then sampled one top step at a time:
the top prior fills the top step position by position (raster order), then the bottom prior fills the rt bottom
slices under it, each position by position; the decoder turns context + future codes into frames, of which the
future ones are returned. Top and bottom sampling draw from two random streams (the bottom's seeded from the
first), so the same seed gives the same top codes whether or not the bottom is sampled (``predict_embeddings``
skips it). A horizon that is not a multiple of ``dt * rt`` holds the last action for the rest of the last step;
a horizon beyond ``future_frames`` slides the top prior's window by whole top steps, the newest predicted steps
taking the place of the context.

    model = foresight.get_model_class("video_vqvae")(foresight.preset(VideoVQVAEConfig, "tiny"))
    video = model.predict(context, actions, num_samples=2, seed=0)   # [B, 2, T, 3, H, W]
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from foresight.data.cache import CachedCodes, code_dtype, encode_clips
from foresight.models.video_vqvae.config import VideoVQVAEConfig
from foresight.models.video_vqvae.pixelcnn import BottomPrior, TopPrior, sample_slice
from foresight.models.video_vqvae.vqvae import HierarchicalVQVAE
from foresight.registry import register_model
from foresight.world_model import WorldModel

__all__ = ["VideoVQVAE", "step_actions"]


def step_actions(actions: Tensor, frames_per_step: int) -> Tensor:
    """Actions [B, T, A] -> action vectors of the ceil(T / k) latent steps they lead into [B, T', k * A]: the k
    actions leading into a step's frames, concatenated in time order (the last action held to fill a step)."""
    b, t, a = actions.shape
    steps = math.ceil(t / frames_per_step)
    if steps * frames_per_step > t:
        actions = torch.cat([actions, actions[:, -1:].expand(b, steps * frames_per_step - t, a)], dim=1)
    return actions.reshape(b, steps, frames_per_step * a)


def _draw_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


@register_model("video_vqvae")
class VideoVQVAE(WorldModel):
    """Hierarchical Video VQ-VAE world model. ``embed`` / ``predict_embeddings`` work in top-code space."""

    config_class = VideoVQVAEConfig
    stages = ("vqvae", "top_prior", "bottom_prior")
    stage_modules = {"vqvae": "vqvae", "top_prior": "top_prior", "bottom_prior": "bottom_prior"}

    def __init__(self, config: VideoVQVAEConfig):
        config.validate()
        super().__init__(config)
        self.vqvae = HierarchicalVQVAE(config)
        self.top_prior = TopPrior(config)
        self.bottom_prior = BottomPrior(config)

    # ------------------------------------------------------------------ stages
    # ------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode(self, frames: Tensor, *, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """clips [B, T, 3, H, W] in [0, 1] (T a multiple of dt) -> (bottom codes [B, T/dt, hb, wb], top codes
        [B, floor(T/(dt*rt)), ht, wt]) int64, frozen VQ-VAE."""
        parts = [self.vqvae.encode_codes(frames[i:i + batch_size]) for i in range(0, frames.shape[0], batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def decode(self, bottom: Tensor, top: Tensor, *, batch_size: int = 64) -> Tensor:
        """bottom codes [B, Tb, hb, wb] + top codes [B, >= ceil(Tb/rt), ht, wt] -> frames [B, Tb*dt, 3, H, W]."""
        return torch.cat([self.vqvae.decode_codes(bottom[i:i + batch_size], top[i:i + batch_size])
                          for i in range(0, bottom.shape[0], batch_size)])

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        if self.stage == "vqvae":
            return self._vqvae_loss(batch)
        if self.stage == "top_prior":
            return self._top_prior_loss(batch)
        return self._bottom_prior_loss(batch)

    def _vqvae_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        return self.vqvae.loss(self.clip_frames(batch))

    def _codes_of(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(top [B, L, ht, wt], bottom [B, Tb, hb, wb]) codes of a cached batch or of a clip batch."""
        cfg = self.config
        if "codes" in batch and "bottom_codes" in batch:
            top, bottom = batch["codes"].to(self.device).long(), batch["bottom_codes"].to(self.device).long()
        elif "frames" in batch:
            bottom, top = self.encode(self.clip_frames(batch))
        else:
            raise ValueError(f"the {self.stage} stage expects a batch with 'codes' and 'bottom_codes' (from "
                             f"stage_dataset) or 'frames'")
        tb = cfg.context_bottom_steps + cfg.future_bottom_steps
        if top.ndim != 4 or top.shape[1] < cfg.top_window or top.shape[2:] != (cfg.top_grid, cfg.top_grid):
            raise ValueError(f"expected top codes [B, >= {cfg.top_window}, {cfg.top_grid}, {cfg.top_grid}], got "
                             f"{list(top.shape)}")
        if bottom.ndim != 4 or bottom.shape[1] < tb or bottom.shape[2:] != (cfg.bottom_grid, cfg.bottom_grid):
            raise ValueError(f"expected bottom codes [B, >= {tb}, {cfg.bottom_grid}, {cfg.bottom_grid}], got "
                             f"{list(bottom.shape)}")
        return top[:, :cfg.top_window], bottom[:, :tb]

    def _future_actions(self, batch: dict[str, Any]) -> Tensor | None:
        """The F future actions [B, F, A] of a batch (None for an action-free model)."""
        if self.action_dim == 0:
            return None
        c, f = self.context_frames, self.future_frames
        if batch.get("actions") is None:
            raise ValueError(f"this Video VQ-VAE model is action-conditioned: the batch needs 'actions' "
                             f"[B, C+F-1, {self.action_dim}]")
        actions = batch["actions"].to(self.device).float()
        if actions.ndim != 3 or actions.shape[1] < c + f - 1 or actions.shape[2] != self.action_dim:
            raise ValueError(f"expected actions [B, >= {c + f - 1}, {self.action_dim}], got {list(actions.shape)}")
        return actions[:, c - 1:c - 1 + f]

    @staticmethod
    def _ce(logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """logits [N, K, ...], target [N, ...] -> (cross-entropy, metrics)."""
        loss = F.cross_entropy(logits.float(), target)
        with torch.no_grad():
            acc = (logits.argmax(1) == target).float().mean()
        return loss, {"ce": float(loss.detach()), "code_accuracy": float(acc)}

    def _top_prior_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        top, bottom = self._codes_of(batch)
        actions = self._future_actions(batch)
        acts = step_actions(actions, cfg.frames_per_top_step) if actions is not None else None  # [B, F/(dt rt), Ca]
        logits = self.top_prior(top, bottom[:, :cfg.context_bottom_steps], acts)  # [B, K, ft, ht, wt]
        return self._ce(logits, top[:, cfg.context_top_steps:])

    def _bottom_prior_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        top, bottom = self._codes_of(batch)
        actions = self._future_actions(batch)
        tcb, fb = cfg.context_bottom_steps, cfg.future_bottom_steps
        future = torch.arange(fb, device=self.device)
        k = cfg.bottom_slices_per_clip
        if 0 < k < fb:  # a random subset of the future slices (the same for every clip of the batch)
            future = future[torch.randperm(fb, device=self.device)[:k]]
        acts = step_actions(actions, cfg.time_downsample)[:, future] if actions is not None else None  # [B, n, Ca]
        logits = self.bottom_prior(top, bottom, future + tcb, acts)  # [B, n, K, hb, wb]
        return self._ce(logits.flatten(0, 1), bottom[:, future + tcb].flatten(0, 1))

    def stage_dataset(self, dataset: Any, stage: str | None = None) -> Any:
        """Prior stages: encode every clip once with the frozen VQ-VAE (a `CachedCodes` of top codes, with bottom
        codes, actions and task as extras). Augmentation of the source is frozen at caching time."""
        if (stage or self.stage) == "vqvae":
            return dataset
        return self.cache_codes(dataset)

    @torch.no_grad()
    def cache_codes(self, dataset: Any, *, batch_size: int = 32) -> CachedCodes:
        dtype = code_dtype(self.config.codebook_size)

        def encode(frames: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:  # frames [b, C+F, 3, H, W]
            bottom, top = self.encode(frames.to(self.device))
            return {"codes": top.to(dtype), "bottom_codes": bottom.to(dtype)}

        was_training = self.training
        self.eval()
        try:
            out = encode_clips(dataset, encode, length=self.context_frames + self.future_frames,
                               batch_size=batch_size, desc="Video VQ-VAE: caching codes")
        finally:
            self.train(was_training)
        return CachedCodes(out.pop("codes"), out)

    # ------------------------------------------------------------------ sampling
    def _sample(self, context_frames: Tensor, actions: Tensor | None, num_samples: int,
                generator: torch.Generator | None, horizon: int, *, bottom: bool = True) -> tuple[Tensor, Tensor]:
        """-> (top codes [M, tc + ceil(T/(dt rt)), ht, wt], bottom codes [M, tcb + ceil(T/dt), hb, wb]) of the
        context followed by the sampled future, rows sample-minor (row i*S + s). ``bottom=False`` leaves the
        future bottom codes 0 when no window slides (embeddings need only the top)."""
        cfg = self.config
        b, s = context_frames.shape[0], num_samples
        m = b * s
        tc, tcb, rt = cfg.context_top_steps, cfg.context_bottom_steps, cfg.top_time_downsample
        n_top = math.ceil(horizon / cfg.frames_per_top_step)
        n_bottom = math.ceil(horizon / cfg.time_downsample)
        sample_bottom = bottom or n_top > cfg.future_top_steps  # a slid window's context needs bottom codes
        bottom_gen = torch.Generator(device=self.device).manual_seed(_draw_seed(generator))

        # A shared context (a planner's one context expanded over N candidates): encoded and conditioned once.
        shared = b > 1 and (context_frames.stride(0) == 0 or bool((context_frames == context_frames[:1]).all()))
        ctx_bottom, ctx_top = self.encode(context_frames[:1] if shared else context_frames)  # [rows, ...]
        rows = ctx_top.shape[0]
        top_acts = bottom_acts = None
        if actions is not None:
            top_acts = step_actions(actions, cfg.frames_per_top_step).repeat_interleave(s, dim=0)  # [M, n_top, Ca]
            bottom_acts = step_actions(actions, cfg.time_downsample).repeat_interleave(s, dim=0)  # [M, n_bottom, Ca]
        sampling = functools.partial(sample_slice, top_k=cfg.top_k, temperature=cfg.temperature)

        top = ctx_top.new_zeros(m, tc + n_top, cfg.top_grid, cfg.top_grid)
        top[:, :tc] = ctx_top.repeat_interleave(m // rows, dim=0)
        bot = ctx_bottom.new_zeros(m, tcb + n_top * rt, cfg.bottom_grid, cfg.bottom_grid)
        bot[:, :tcb] = ctx_bottom.repeat_interleave(m // rows, dim=0)
        first_cond = self.top_prior.condition(ctx_top, ctx_bottom)  # [rows, Dc, ht, wt]
        if rows > 1:
            first_cond = first_cond.repeat_interleave(s, dim=0)  # rows == 1 broadcasts inside the blocks
        for k in range(n_top):
            g = tc + k  # the top step being sampled, as an index of the whole sequence
            ws = max(0, g + 1 - cfg.top_window)  # the window: steps ws .. g, its first tc steps the context
            if ws == 0:
                cond = first_cond
            else:  # a slid window: its context is predicted steps, different in every row
                cond = self.top_prior.condition(top[:, ws:ws + tc], bot[:, ws * rt:(ws + tc) * rt])
            window = top[:, ws:g + 1]  # a view: sampled codes appear in it as they are written
            wacts = self.top_prior.window_actions(top_acts[:, ws:k + 1], g + 1 - ws) if top_acts is not None else None
            sampling(lambda w=window, c=cond, a=wacts: self.top_prior.run(w, c, a)[:, :, -1], top[:, g],
                     generator=generator)
            if not sample_bottom:
                continue
            for n in range(g * rt, (g + 1) * rt):  # the bottom slices under top step g
                if n - tcb >= n_bottom:
                    break
                cond_b = self.bottom_prior.condition(top[:, :g + 1], bot, torch.tensor([n], device=self.device))
                act_b = bottom_acts[:, n - tcb] if bottom_acts is not None else None
                sampling(lambda n=n, c=cond_b, a=act_b: self.bottom_prior.run(bot[:, n], c, a), bot[:, n],
                         generator=bottom_gen)
        return top, bot[:, :tcb + n_bottom]

    def _sample_codes(self, context_frames, actions, num_samples, generator, horizon, *, bottom=True):
        with torch.inference_mode():  # cheaper per op than no_grad: sampling runs many small passes
            top, bot = self._sample(context_frames, actions, num_samples, generator, horizon, bottom=bottom)
        return top.clone(), bot.clone()  # normal tensors again (inference tensors cannot be edited or saved)

    def decode_future(self, top: Tensor, bottom: Tensor, horizon: int, batch: int) -> Tensor:
        """Whole-sequence codes from `_sample` -> future frames [B, S, horizon, 3, H, W] in [0, 1]."""
        frames = self.decode(bottom, top)  # [M, (tcb + n_bottom) * dt, 3, H, W]; the decoder is causal
        c = self.context_frames
        return frames[:, c:c + horizon].unflatten(0, (batch, -1))

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        top, bottom = self._sample_codes(context_frames, actions, num_samples, generator, horizon)
        return self.decode_future(top, bottom, horizon, context_frames.shape[0])

    @torch.no_grad()
    def predict_codes(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                      horizon: int | None = None, seed: int | None = None) -> dict[str, Tensor]:
        """Sampled future codes, no decoding: ``top`` [B, S, ceil(T/(dt rt)), ht, wt], ``bottom``
        [B, S, ceil(T/dt), hb, wb]."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(None, seed)
        was_training = self.training
        self.eval()
        try:
            top, bottom = self._sample_codes(context_frames, actions, num_samples, generator, horizon)
        finally:
            self.train(was_training)
        b, cfg = context_frames.shape[0], self.config
        return {"top": top[:, cfg.context_top_steps:].unflatten(0, (b, num_samples)),
                "bottom": bottom[:, cfg.context_bottom_steps:].unflatten(0, (b, num_samples))}

    # ------------------------------------------------------------------ model-space embeddings (planning costs)
    def code_embedding(self, top_codes: Tensor) -> Tensor:
        """top codes [..., ht, wt] -> [..., ht*wt*E] top codebook vectors (raster order, flattened)."""
        return self.vqvae.top_quantizer.lookup(top_codes).flatten(-3)

    def embed(self, frames: Tensor) -> Tensor:
        """Frames [..., 3, H, W] -> top codebook vectors [..., ht*wt*E] of the frame held still.

        A top step covers dt*rt frames, so a single image has no codes of its own: each frame is encoded as a
        still clip of C + dt*rt copies of itself and the top codes of its first step after the context are
        returned (the position at which the top prior samples the first future step)."""
        size = self.image_size
        if not isinstance(frames, Tensor) or frames.ndim < 3 or tuple(frames.shape[-3:]) != (3, size, size):
            got = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames: expected [..., 3, {size}, {size}] in [0, 1], got {got}")
        lead = frames.shape[:-3]
        length = self.context_frames + self.config.frames_per_top_step
        still = frames.reshape(-1, 1, *frames.shape[-3:]).expand(-1, length, -1, -1, -1)
        _, top = self.encode(still.to(self.device).float())
        return self.code_embedding(top[:, -1]).view(*lead, -1)

    @torch.no_grad()
    def predict_embeddings(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                           horizon: int | None = None, generator: torch.Generator | None = None,
                           seed: int | None = None) -> Tensor:
        """Like ``predict`` but samples only the top codes and decodes nothing: [B, S, T, ht*wt*E], frame t carrying
        the top codebook vectors of its top step (t // (dt*rt)). The same seed samples the same top codes as
        ``predict``; compare with ``embed(goal_image)``."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(generator, seed)
        was_training = self.training
        self.eval()
        try:
            top, _ = self._sample_codes(context_frames, actions, num_samples, generator, horizon, bottom=False)
        finally:
            self.train(was_training)
        cfg = self.config
        future = top[:, cfg.context_top_steps:].unflatten(0, (context_frames.shape[0], num_samples))
        per_frame = torch.arange(horizon, device=future.device) // cfg.frames_per_top_step
        return self.code_embedding(future[:, :, per_frame])
