"""Hier-VRNN world model: a VRNN with L latent levels per step, ConvLSTM priors and posteriors, dense
connections and a recurrent ConvLSTM likelihood (Castrejon et al., 2019; seeds/003). See docs/hier_vrnn.md.

One step t (predicting x_t from x_{t-1}, a_{t-1} and the recurrent states), f = the frame-feature pyramid::

    z_t^l ~ q(z^l | f(x_t),     z_t^{<l}, a_{t-1}, state_q^l)    l = 0..L-1, top (1x1) first   training
    z_t^l ~ p(z^l | f(x_{t-1}), z_t^{<l}, a_{t-1}, state_p^l)    ancestral sampling           prediction
    x_t    = x_{t-1} + decoder(f(x_{t-1}), z_t^0..z_t^{L-1}, a_{t-1}, state_d)

The context sets the recurrent states (a small conv per ConvLSTM over the C context frames' features, the
seed's "Initial State"), so no latent is inferred on the context and no action between context frames is needed
(``predict`` is never given those). Training teacher-forces the frames (f(x_{t-1}) from the true frame, as in
the seed) and samples z from the posterior; prediction samples z from the prior and feeds each predicted frame
back through the encoder.

Loss per future frame (the negative ELBO of Eq. 5, per pixel): ``mse(x_t) + beta * sum_l KL_l / (3 H W)`` with
KL_l in nats per frame, i.e. a Gaussian likelihood whose variance is set by ``kl_weight`` (``kl_weight = 2
sigma^2``; 1.0 is about SVG's beta = 1e-4 on mean-pixel MSE at 64x64). beta rises linearly from 0 to
``kl_weight`` over ``kl_warmup_steps`` (beta warm-up, Sonderby et al. 2016; the seed's Table 2 "BW").

The warm-up needs the training step, which the Trainer does not pass to ``loss``: the model counts it itself in
the int64 buffer ``train_step``, incremented by every ``loss`` call made in training mode with gradients on (so
evaluation and no-grad calls do not count). Being a buffer it is saved in ``model.safetensors``, restored on
resume and kept by ``--init`` fine-tunes. It counts micro-batches: with ``train.grad_accum=k`` the warm-up lasts
``kl_warmup_steps / k`` optimizer steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.nn.distributions import gaussian_kl
from foresight.registry import register_model
from foresight.world_model import WorldModel

from .config import HierVRNNConfig
from .modules import FrameDecoder, FrameEncoder, LatentLevel, State

__all__ = ["HierVRNN", "gaussian_kl"]


@register_model("hier_vrnn")
class HierVRNN(WorldModel):
    """Hierarchical VRNN world model, action-conditioned or action-free (``action_dim=0``)."""

    config_class = HierVRNNConfig

    def __init__(self, config: HierVRNNConfig):
        super().__init__(config)
        self.encoder = FrameEncoder(config)
        self.prior = nn.ModuleList(LatentLevel(config, l) for l in range(self.num_levels))
        self.posterior = nn.ModuleList(LatentLevel(config, l) for l in range(self.num_levels))
        self.decoder = FrameDecoder(config)
        self.register_buffer("train_step", torch.zeros((), dtype=torch.int64))

    @property
    def num_levels(self) -> int:
        return len(self.config.latent_sizes)

    # ------------------------------------------------------------------ KL warm-up
    def kl_beta(self, step: int | None = None) -> float:
        """The KL weight at training step ``step`` (default: the model's own ``train_step`` counter)."""
        step = int(self.train_step) if step is None else int(step)
        warmup, weight = self.config.kl_warmup_steps, self.config.kl_weight
        return weight if warmup == 0 else weight * min(1.0, step / warmup)

    # ------------------------------------------------------------------ building blocks
    def encode(self, frames: Tensor) -> dict[int, Tensor]:
        """``frames [N, 3, H, W]`` in [0, 1] -> the feature pyramid ``{r: [N, Ch_r, r, r]}``."""
        return self.encoder(frames)

    def _encode_clips(self, frames: Tensor) -> dict[int, Tensor]:
        """``[B, T, 3, H, W]`` -> ``{r: [B, T, Ch_r, r, r]}`` (all frames in one encoder call)."""
        b, t = frames.shape[:2]
        return {r: f.view(b, t, *f.shape[1:]) for r, f in self.encode(frames.flatten(0, 1)).items()}

    def _initial_states(self, context: dict[int, Tensor]) -> tuple[list[State], list[State], list[State]]:
        """``context[r] [N, C, Ch_r, r, r]`` -> initial states of the priors, the posteriors and the decoder."""
        prior = [level.init(context[level.size]) for level in self.prior]
        posterior = [level.init(context[level.size]) for level in self.posterior]
        return prior, posterior, self.decoder.initial_state(context)

    def _output(self, previous: Tensor, out: Tensor) -> Tensor:
        return previous + out if self.config.residual else torch.sigmoid(out)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Negative ELBO per pixel of a clip batch (``frames [B, C+F, 3, H, W]``, ``actions [B, C+F-1, A]``),
        teacher-forced, z from the posterior; counts a training step (see the module docstring)."""
        frames = batch["frames"]
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        frames = frames.to(self.device)
        c, size = self.context_frames, self.image_size
        n = frames.shape[1] if frames.ndim == 5 else 0  # clip length C + F
        if n <= c or tuple(frames.shape[2:]) != (3, size, size):
            raise ValueError(f"frames: expected [B, T > {c}, 3, {size}, {size}], got {list(frames.shape)}")
        actions = None
        if self.action_dim > 0:
            actions = batch.get("actions")
            if actions is None or actions.ndim != 3 or actions.shape[1] < n - 1 or actions.shape[2] != self.action_dim:
                raise ValueError(f"actions: expected [B, {n - 1}, {self.action_dim}], got "
                                 f"{None if actions is None else list(actions.shape)}")
            actions = actions[:, : n - 1].to(self.device, torch.float32)

        beta = self.kl_beta()
        if self.training and torch.is_grad_enabled():
            self.train_step += 1

        feats = self._encode_clips(frames)  # {r: [B, N, Ch_r, r, r]}
        prior_state, post_state, dec_state = self._initial_states({r: f[:, :c] for r, f in feats.items()})
        # Per-frame views by unbind: its backward stacks the gradients once, where indexing f[:, t] per step
        # would zero-fill a full-clip gradient per step (about a tenth of the CPU step time at 64x64).
        per_frame = {r: f.unbind(1) for r, f in feats.items()}  # {r: N x [B, Ch_r, r, r]}
        preds, kls = [], [[] for _ in range(self.num_levels)]
        for t in range(c, n):  # teacher forcing: f(x_{t-1}) of the true frame
            a = None if actions is None else actions[:, t - 1]
            prev = {r: f[t - 1] for r, f in per_frame.items()}
            zs: list[Tensor] = []
            for l, (prior, post) in enumerate(zip(self.prior, self.posterior)):
                mq, lq, post_state[l] = post(per_frame[post.size][t], zs, a, post_state[l])
                mp, lp, prior_state[l] = prior(prev[prior.size], zs, a, prior_state[l])
                kls[l].append(gaussian_kl(mq.float(), lq.float(), mp.float(), lp.float()).flatten(1).sum(-1))  # [B]
                zs.append(mq + lq.exp() * torch.randn_like(mq))
            out, dec_state = self.decoder.step(prev, zs, a, dec_state)
            preds.append(self._output(frames[:, t - 1], out.float()))
        pred = torch.stack(preds, dim=1)  # [B, F, 3, H, W]
        mse = F.mse_loss(pred, frames[:, c:])
        kl_levels = [torch.stack(k, dim=1).mean() for k in kls]  # nats per frame, per level
        kl = torch.stack(kl_levels).sum()
        loss = mse + beta * kl / (3 * size * size)
        metrics = {"mse": float(mse.detach()), "psnr": float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10))),
                   "kl": float(kl.detach()), "beta": beta, "loss": float(loss.detach())}
        metrics.update({f"kl{l}": float(k.detach()) for l, k in enumerate(kl_levels)})
        return loss, metrics

    # ------------------------------------------------------------------ inference
    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        frames = self._rollout(context_frames, actions, num_samples, generator, horizon)
        return frames.view(-1, num_samples, horizon, 3, self.image_size, self.image_size)

    def _rollout(self, context_frames: Tensor, actions: Tensor | None, num_samples: int,
                 generator: torch.Generator | None, horizon: int) -> Tensor:
        """Frames ``[B*S, T, 3, H, W]`` (sample index inner): ancestral prior samples, predicted frames fed back.

        Noise is drawn per (sample, step, level) and shared by the batch rows: a planner's candidates are
        compared under common random numbers, and a row predicted alone gets the sample it got in a batch.
        """
        b, s = context_frames.shape[0], num_samples
        # A planner passes one context expanded over its candidates (stride 0): encode it and set the states once.
        shared = b > 1 and context_frames.stride(0) == 0
        source = context_frames[:1] if shared else context_frames  # [B or 1, C, 3, H, W]
        feats = self._encode_clips(source)  # {r: [B or 1, C, Ch_r, r, r]}
        prior_state, _, dec_state = self._initial_states(feats)

        def rows(x: Tensor) -> Tensor:  # [B or 1, ...] -> [B*S, ...]
            return x.expand(b, *x.shape[1:]).repeat_interleave(s, dim=0)

        prior_state = [(rows(h), rows(cs)) for h, cs in prior_state]
        dec_state = [(rows(h), rows(cs)) for h, cs in dec_state]
        prev = {r: rows(f[:, -1]) for r, f in feats.items()}
        frame = rows(source[:, -1])  # [B*S, 3, H, W]
        if actions is not None:
            actions = actions.repeat_interleave(s, dim=0)  # [B*S, T, A]
        out = []
        for t in range(horizon):
            a = None if actions is None else actions[:, t]
            zs: list[Tensor] = []
            for l, prior in enumerate(self.prior):
                mean, logstd, prior_state[l] = prior(prev[prior.size], zs, a, prior_state[l])
                noise = torch.randn((s, *mean.shape[1:]), generator=generator, device=mean.device,
                                    dtype=mean.dtype).repeat(b, 1, 1, 1)  # [B*S, Z_l, r_l, r_l]
                zs.append(mean + logstd.exp() * noise)
            delta, dec_state = self.decoder.step(prev, zs, a, dec_state)
            frame = self._output(frame, delta.to(frame.dtype)).clamp(0, 1)
            out.append(frame)
            if t + 1 < horizon:
                prev = self.encode(frame)
        return torch.stack(out, dim=1)

    # ------------------------------------------------------------------ features for policies and costs
    @property
    def feature_dim(self) -> int:
        return self.config.top_channels

    def features(self, frames: Tensor, actions: Tensor | None = None) -> Tensor:
        """Per-frame ``[B, T, top_channels]``: the 1x1 top frame feature (frame t only, so causal)."""
        b, t = frames.shape[:2]
        return self.encode(frames.flatten(0, 1))[1].flatten(1).view(b, t, -1)

    @property
    def embedding_dim(self) -> int:
        return self.config.top_channels

    def embed(self, frames: Tensor) -> Tensor:
        """``[..., 3, H, W]`` -> ``[..., top_channels]``: the 1x1 top frame feature, the input of the top latent
        level's prior. ``predict_embeddings`` is the default ``embed(predict(...))``: the likelihood reads each
        predicted frame back through the encoder, so there is no pixel-free rollout to offer. Not yet checked as
        a planning cost (``benchmarks/cost_validity.py``)."""
        lead = frames.shape[:-3]
        return self.encode(frames.reshape(-1, *frames.shape[-3:]))[1].flatten(1).view(*lead, -1)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, latent_sizes={list(self.config.latent_sizes)}, "
                f"decoder_sizes={list(self.config.decoder_sizes)}")
