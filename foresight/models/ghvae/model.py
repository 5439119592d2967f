"""GHVAE world model: K stacked VAE modules trained greedily, one stage per module.

Stages: ``("module1", ..., "moduleK", "finetune")``. In stage ``module{k}`` only module k trains; modules
1..k-1 are frozen (no ``requires_grad``, eval mode) and their encoder outputs come from a cache built once by
`stage_dataset`; modules after k are not used. The prediction in stage ``module{k}`` (and after training it)
uses depth k: the deepest latent is z^k. ``finetune`` trains all K modules end to end at depth K (the paper's
optional fine-tune; on a fresh model it is the "end-to-end from scratch" baseline).

Per transition t -> t+1 (x^0 = x, all h^j_t from the frame x_t)::

    h_t^j = enc^j(h_t^{j-1})                                       j = 1..d
    q: z_{t+1}^d ~ N(post^d(h_{t+1}^d), posterior_std^2)           training only
    p: z_{t+1}^d ~ N(prior^d(h_t^d, a_t))                          inference
    u^d = z_{t+1}^d;   u^{j-1} = dec^j(h_t^j, u^j, a_t)  for j = d..1;   x_{t+1} = x_t + u^0
    h_{t+1}^d ~= h_t^d + next^d(y^d)      y^d = the level-d bottleneck inside dec^d (before it upsamples)

Where the action enters, and why: the seeds put a_t only into the prior over z^d. With a fixed posterior std of
1 and a KL weight of 1e-3 the model keeps z nearly empty (0.05-0.1 nats per frame measured), so that path
carries nothing and the predictions ignore the actions. SVG, SV2P and FitVid feed the action into the
*deterministic* frame predictor; here it modulates every decoder's bottleneck by FiLM (``action_in_decoder``,
see `modules.py`), a path the likelihood cannot ignore, and it still enters the prior, so z only has to carry
what the action does not explain. ``action_in_decoder=False`` is the seeds' prior-only conditioning.

Loss of stage module d (the per-module ELBO, Eq. 2), per future frame, both terms per pixel, plus the probe::

    mse(x_{t+1}, target) + kl_weight * KL(q || p) / (3 H W)
        + latent_weight * |h_t^d + next^d(y^d) - h_{t+1}^d|^2 / var(h_{t+1}^d)      (inputs and target detached)
        + rollout_weight * mean_k |g^k - h_{c-1+k}^d|^2 / var(h^d)      (open loop, targets detached)

where g^0 = h_{c-1}^d and g^k = g^{k-1} + next^d(dec^d.step(g^{k-1}, z ~ prior(g^{k-1}, a), a)) is exactly the rollout
that planning scores (`predict_embeddings`), trained through all F steps (`_open_loop_loss`).

The decoders of frozen modules sit inside the likelihood, as in the paper: gradients flow through them into
module d, but their weights do not change. The probe term trains only the ``next_feature`` head: it reads the
predicted next deepest encoding off the decoder, which lets planning roll out at the deepest level without
decoding pixels (`predict_embeddings`) and compare that to ``embed(goal)`` = the encoding of the goal image.
A one-step probe is not enough for that: its errors compound over a 10-step plan, and teacher forcing lets the
dynamics under-predict motion at every step (the control check found rank correlations of 0.3-0.7 with it alone).
The rollout term trains that same path open loop through the prior, the deepest decoder's action FiLM and the
head, so the states a planner compares to the goal are the ones the loss made right.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from tqdm.auto import tqdm

from foresight.nn.distributions import gaussian_kl
from foresight.registry import register_model
from foresight.world_model import WorldModel

from foresight.data.cache import distinct_frame_batches
from foresight.data.frame_store import DiskFrames

from .cache import DiskFeatures, FeatureCacheDataset, clip_frame_index, gather_clips
from .config import GHVAEConfig, module_shapes
from .modules import GHVAEModule

__all__ = ["GHVAE"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@register_model("ghvae")
class GHVAE(WorldModel):
    """Greedy Hierarchical VAE (Wu et al., 2021), action-conditioned or action-free (``action_dim=0``)."""

    config_class = GHVAEConfig

    def __init__(self, config: GHVAEConfig):
        super().__init__(config)
        self.shapes = module_shapes(config)
        # Named `stack` (not `modules`, which nn.Module already defines). stack[k-1] is module k.
        self.stack = nn.ModuleList(
            GHVAEModule(s, action_dim=config.action_dim, res_blocks=config.res_blocks,
                        action_in_decoder=config.action_in_decoder, readout_size=config.readout_size)
            for s in self.shapes)
        self.set_stage(self.stages[0])

    # ------------------------------------------------------------------ stages
    @property
    def stages(self) -> tuple[str, ...]:  # overrides the ClassVar: the stage list depends on num_modules
        greedy = tuple(f"module{k}" for k in range(1, self.config.num_modules + 1))
        return greedy + (("finetune",) if self.config.finetune else ())

    @property
    def num_modules(self) -> int:
        return self.config.num_modules

    @property
    def depth(self) -> int:
        """Modules used by `loss` and `predict` in the current stage (k in ``module{k}``, K in finetune)."""
        return int(self.stage[len("module"):]) if self.stage.startswith("module") else self.num_modules

    @property
    def frozen_modules(self) -> int:
        """How many leading modules are frozen in the current stage."""
        return self.depth - 1 if self.stage.startswith("module") else 0

    def stage_parameters(self, stage: str):
        if stage == "finetune":
            return list(self.stack.parameters())
        k = int(stage[len("module"):])
        return list(self.stack[k - 1].parameters())

    @property
    def stage(self) -> str:
        return self.__dict__.get("_stage", "module1")

    @stage.setter
    def stage(self, value: str) -> None:
        # A property so that *any* assignment (WorldModel.from_pretrained sets ``model.stage`` directly) also
        # freezes the right modules: a loaded module-2 checkpoint trains module 2, not module 1.
        self.__dict__["_stage"] = value
        if "stack" in self._modules and value in self.stages:
            trainable = {id(p) for p in self.stage_parameters(value)}
            for p in self.parameters():
                p.requires_grad_(id(p) in trainable)
                if id(p) not in trainable:
                    p.grad = None  # stale gradients of an earlier stage must not reach an optimizer over all params
            self.train(self.training)  # re-applies eval mode to the frozen modules

    def set_stage(self, stage: str) -> "GHVAE":
        super().set_stage(stage)  # validates the name; the ``stage`` setter does the freezing
        return self

    def train(self, mode: bool = True) -> "GHVAE":
        super().train(mode)
        if mode and "stack" in self._modules:
            for module in self.stack[: self.frozen_modules]:
                module.eval()  # frozen modules behave as at inference (matters for any dropout / norm stats)
        return self

    # ------------------------------------------------------------------ growing a trained stack
    def grow(self, num_modules: int | None = None) -> "GHVAE":
        """A model with more modules whose first ``self.num_modules`` modules are copies of this one's.

        The new model's stage is the first new module, ready to train it greedily; nothing else is retrained.
        """
        num_modules = self.num_modules + 1 if num_modules is None else int(num_modules)
        if num_modules <= self.num_modules:
            raise ValueError(f"grow: expected more than {self.num_modules} modules, got {num_modules}")
        bigger = type(self)(dataclasses.replace(self.config, num_modules=num_modules)).to(self.device)
        for old, new in zip(self.stack, bigger.stack):
            new.load_state_dict(old.state_dict())
        bigger.stats = dict(self.stats)
        return bigger.set_stage(f"module{self.num_modules + 1}")

    # ------------------------------------------------------------------ building blocks
    def encode(self, frames: Tensor, depth: int | None = None) -> list[Tensor]:
        """``frames [N, 3, H, W]`` in [0, 1] -> ``[h^1 [N, C^1, H^1, W^1], ..., h^depth]``."""
        depth = self.depth if depth is None else depth
        h, out = frames * 2 - 1, []
        for module in self.stack[:depth]:
            h = module.encoder(h)
            out.append(h)
        return out

    def decode(self, hs: list[Tensor], u: Tensor, frame: Tensor, action: Tensor | None = None,
               bottleneck: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode the deepest future ``u = z^d [N, Z^d, H^d, W^d]`` with the current ``hs = [h_t^1..h_t^d]``,
        frame ``x_t [N, 3, H, W]`` and action ``a_t [N, A]`` into ``x_{t+1} [N, 3, H, W]`` (not clamped).

        Also returns the deepest decoder's bottleneck ``y^d [N, C^d, H^d, W^d]`` (see `next_features`); pass
        ``bottleneck`` when it is already computed (then ``u`` is unused)."""
        frozen = self.frozen_modules if (self.config.checkpoint_frozen and torch.is_grad_enabled()) else 0
        d = len(hs)
        top = self.stack[d - 1].decoder
        y = top.step(hs[-1], u, action) if bottleneck is None else bottleneck  # [N, C^d, H^d, W^d]
        u = top.out(y)
        for j in range(d - 1, 0, -1):
            decoder = self.stack[j - 1].decoder
            if j <= frozen and u.requires_grad:
                # The gradient must pass through a frozen decoder into module k, but its activations need not
                # be kept: recompute them in backward (less memory for one extra forward of frozen parts).
                u = torch.utils.checkpoint.checkpoint(decoder, hs[j - 1], u, action, use_reentrant=False)
            else:
                u = decoder(hs[j - 1], u, action)  # [N, Z^{j-1} (3 at j=1), H^{j-1}, W^{j-1}]
        return (frame + u if self.config.residual else torch.sigmoid(u)), y

    def _features_for(self, batch: dict[str, Any], frames: Tensor, depth: int, frozen: int) -> list[Tensor]:
        """h^1..h^depth of all frames ``[B, T, 3, H, W]``, each ``[B, T, C, H, W]``; frozen levels from the
        batch's cache (``"h1"``...) when present, else recomputed without gradient."""
        b, t = frames.shape[:2]
        hs: list[Tensor] = []
        h = frames.flatten(0, 1) * 2 - 1  # [B*T, 3, H, W]
        for j in range(1, depth + 1):
            cached = batch.get(f"h{j}") if j <= frozen else None
            if cached is not None:
                shape = self.shapes[j - 1]
                expected = (b, t, shape.channels, shape.size, shape.size)
                if tuple(cached.shape) != expected:
                    raise ValueError(f"cached feature h{j}: expected shape {list(expected)}, got {list(cached.shape)}")
                h = cached.to(frames.device, torch.float32).flatten(0, 1)
            elif j <= frozen:
                with torch.no_grad():
                    h = self.stack[j - 1].encoder(h)
            else:
                h = self.stack[j - 1].encoder(h)
            hs.append(h)
        return [x.view(b, t, *x.shape[1:]) for x in hs]

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        frames = batch["frames"]
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        frames = frames.to(self.device)
        c, n = self.context_frames, frames.shape[1]
        if frames.ndim != 5 or n <= c or tuple(frames.shape[2:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"frames: expected [B, T > {c}, 3, {self.image_size}, {self.image_size}], "
                             f"got {list(frames.shape)}")
        actions = None
        if self.action_dim > 0:
            actions = batch.get("actions")
            if actions is None or actions.ndim != 3 or actions.shape[1] < n - 1 or actions.shape[2] != self.action_dim:
                raise ValueError(f"actions: expected [B, {n - 1}, {self.action_dim}], got "
                                 f"{None if actions is None else list(actions.shape)}")
            actions = actions[:, : n - 1].to(self.device, torch.float32)
        d, frozen = self.depth, self.frozen_modules
        top = self.stack[d - 1]
        hs = self._features_for(batch, frames, d, frozen)  # d x [B, N, C^j, H^j, W^j]

        # Prior and posterior run over all N-1 transitions so their state has seen the context; the context
        # transitions get zero actions because `predict` is never given the actions between context frames.
        mu_q, mu_p, logstd_p = [], [], []
        state_p = state_q = warm_state = None
        for t in range(n - 1):
            a_t = None
            if actions is not None:
                a_t = actions[:, t] if t >= c - 1 else torch.zeros_like(actions[:, t])
            if t == c - 1:
                warm_state = state_p  # the prior's state after the context, where an open-loop rollout starts
            mp, lp, state_p = top.prior_step(hs[-1][:, t], a_t, state_p)
            mq, _, state_q = top.posterior(hs[-1][:, t + 1], state_q)
            if t >= c - 1:
                mu_p.append(mp), logstd_p.append(lp), mu_q.append(mq)
        mu_q, mu_p, logstd_p = (torch.stack(x, dim=1) for x in (mu_q, mu_p, logstd_p))  # [B, F, Z, H^d, W^d]
        std_q = self.config.posterior_std
        z = mu_q + std_q * torch.randn_like(mu_q)

        # Decode all F future frames at once (teacher forcing: h_t from the true frames).
        cur = [h[:, c - 1: n - 1].flatten(0, 1) for h in hs]  # d x [B*F, C^j, H^j, W^j]
        future_actions = None if actions is None else actions[:, c - 1: n - 1].flatten(0, 1)  # [B*F, A]
        pred, y = self.decode(cur, z.flatten(0, 1), frames[:, c - 1: n - 1].flatten(0, 1), future_actions)
        target = frames[:, c:].flatten(0, 1)
        mse = F.mse_loss(pred, target)
        kl = gaussian_kl(mu_q, math.log(std_q), mu_p, logstd_p).flatten(2).sum(-1).mean()  # nats per frame
        pixels = 3 * self.image_size**2
        # The next-feature probe (module docstring): detached inputs and target, so it trains only the head.
        h_next = hs[-1][:, c:].flatten(0, 1).detach()  # [B*F, C^d, H^d, W^d]
        scale = h_next.var().clamp_min(1e-6)
        latent = F.mse_loss(top.predict_feature(cur[-1].detach(), y.detach()), h_next) / scale
        loss = mse + self.config.kl_weight * kl / pixels + self.config.latent_weight * latent
        metrics = {"mse": float(mse.detach()), "kl": float(kl.detach()),
                   "psnr": float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10))),
                   "latent": float(latent.detach()),  # relative MSE of the predicted next h^d ...
                   "latent_copy": float(F.mse_loss(cur[-1].detach(), h_next) / scale)}  # ... and of h_t^d
        rolled = None
        if self.config.rollout_weight > 0 or self.config.readout_weight > 0:
            rollout, rolled, final, final_copy = self._open_loop_loss(hs[-1], actions, warm_state)
            metrics.update(rollout=float(rollout.detach()), rollout_final=final, rollout_final_copy=final_copy)
            if self.config.rollout_weight > 0:
                loss = loss + self.config.rollout_weight * rollout
        if self.config.readout_weight > 0:
            # The readout image of h^d: of every real frame's encoding (a decoder of the real states) and of the
            # open-loop states (what the model-space cost compares to the goal), both against the pooled frames.
            small = self._pooled(frames)  # [B, N, 3, R, R]
            small_var = small.var().clamp_min(1e-6)
            real = F.mse_loss(top.read_out(hs[-1].flatten(0, 1)), small.flatten(0, 1)) / small_var
            imagined = F.mse_loss(top.read_out(rolled.flatten(0, 1)), small[:, c:].flatten(0, 1)) / small_var
            loss = loss + self.config.readout_weight * (real + imagined)
            metrics.update(readout=float(real.detach()), readout_rollout=float(imagined.detach()),
                           readout_copy=float(F.mse_loss(small[:, c - 1:c].expand_as(small[:, c:]), small[:, c:])
                                              / small_var))
        metrics["loss"] = float(loss.detach())
        return loss, metrics

    def _open_loop_loss(self, h_deep: Tensor, actions: Tensor | None, state) -> tuple[Tensor, Tensor, float, float]:
        """The planning rollout, trained: from the last context frame's h^d, roll the deepest level forward
        open loop (prior sample z, decoder bottleneck, next-feature head, fed back; what `predict_embeddings`
        does) over all F future steps and match every predicted h^d_{t+1} to the encoding of the true frame.

        ``h_deep [B, N, C^d, H^d, W^d]`` (the true encodings), ``actions [B, N-1, A]`` or None, ``state`` the
        prior's state after the context. The start and the targets are detached: the encoder is shaped by the
        likelihood alone, not pulled toward whatever the dynamics can predict (the goal is embedded by the same
        encoder, so a cost in this space must keep what the pixels need). Gradients reach the prior, the deepest decoder's bottleneck (with its action FiLM) and the
        head through every step: a one-step probe cannot learn what ten compounding steps need (latent
        overshooting, as in PlaNet). Returns the loss (relative MSE, mean over steps), the rolled-out states
        ``[B, F, C^d, H^d, W^d]`` and, as floats, the final step's relative error and that of "h^d does not change".
        """
        c, n = self.context_frames, h_deep.shape[1]
        top = self.stack[self.depth - 1]
        target = h_deep[:, c:].detach()  # [B, F, C, H, W]
        scale = target.var().clamp_min(1e-6)
        h = h_deep[:, c - 1].detach()
        preds = []
        for t in range(c - 1, n - 1):
            a_t = None if actions is None else actions[:, t]
            mean, logstd, state = top.prior_step(h, a_t, state)
            z = mean + logstd.exp() * torch.randn_like(mean)
            h = top.predict_feature(h, top.decoder.step(h, z, a_t))
            preds.append(h)
        pred = torch.stack(preds, dim=1)
        per_step = ((pred - target) ** 2).flatten(2).mean(-1).mean(0) / scale  # [F]
        final_copy = F.mse_loss(h_deep[:, c - 1].detach(), target[:, -1]) / scale
        return per_step.mean(), pred, float(per_step[-1].detach()), float(final_copy)

    @torch.no_grad()
    def cache_features(self, dataset: Any, levels: int, *, batch_size: int = 64) -> FeatureCacheDataset:
        """``dataset`` plus the encoder outputs h^1..h^levels of its frames (un-augmented), computed once in
        eval mode and stored in ``cache_dtype`` on CPU (see `FeatureCacheDataset`)."""
        dtype = _DTYPES[self.config.cache_dtype]
        chunks: dict[str, list[Tensor]] = {f"h{j}": [] for j in range(1, levels + 1)}
        shared = clip_frame_index(dataset)
        if shared is not None and isinstance(getattr(dataset, "frames", None), DiskFrames):
            return self._cache_features_on_disk(dataset, levels, shared, dtype, batch_size)
        was_training = self.training
        self.eval()
        try:
            if shared is not None:  # a ClipDataset: encode each distinct frame once
                used, index = shared
                for frames in distinct_frame_batches(dataset.frames, used, batch_size=batch_size, device=self.device,
                                                    desc=f"ghvae cache h1..h{levels}"):
                    for j, h in enumerate(self.encode(frames, levels), start=1):
                        chunks[f"h{j}"].append(h.to("cpu", dtype))
            else:  # any clip dataset: every clip gets its own T rows
                order, t = np.arange(len(dataset)), None
                for start in tqdm(range(0, len(order), batch_size), desc=f"ghvae cache h1..h{levels}", leave=False):
                    frames = gather_clips(dataset, order[start:start + batch_size])["frames"]
                    if frames.dtype == torch.uint8:
                        frames = frames.float() / 255.0
                    t = frames.shape[1]
                    for j, h in enumerate(self.encode(frames.to(self.device).flatten(0, 1), levels), start=1):
                        chunks[f"h{j}"].append(h.to("cpu", dtype))  # [b*T, C, H, W]
                index = np.arange(len(order) * t).reshape(len(order), t)
        finally:
            self.train(was_training)
        features = {name: torch.cat(parts) for name, parts in chunks.items()}
        return FeatureCacheDataset(dataset, features, torch.as_tensor(index))

    def _cache_features_on_disk(self, dataset: Any, levels: int, shared: tuple[np.ndarray, np.ndarray],
                                dtype: torch.dtype, batch_size: int) -> FeatureCacheDataset:
        """`cache_features` for frames on disk: h^1..h^levels go to raw files beside the frame file, named by a
        key over the frozen encoders' weights, the frames used and the dtype (an unchanged key reuses them)."""
        import contextlib
        import hashlib
        import json

        from foresight.checkpoint import atomic_path, atomic_write_text

        used, index = shared
        digest = hashlib.sha256(f"{dataset.frames.path.name}|{self.config.cache_dtype}|{levels}".encode())
        digest.update(np.ascontiguousarray(used).tobytes())
        for module in self.stack[:levels]:
            for p in module.encoder.state_dict().values():
                digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        key = digest.hexdigest()[:20]
        folder = dataset.frames.path.parent / "ghvae_features"
        names = [f"h{j}" for j in range(1, levels + 1)]
        paths = {n: folder / f"{n}_{key}.bin" for n in names}
        sidecar = folder / f"features_{key}.json"
        shapes: dict[str, list[int]] = {}
        if sidecar.is_file() and all(p.is_file() for p in paths.values()):
            shapes = json.loads(sidecar.read_text()).get("shapes", {})
        if set(shapes) != set(names):
            was_training = self.training
            self.eval()
            try:
                with contextlib.ExitStack() as stack:
                    files = {n: stack.enter_context(open(stack.enter_context(atomic_path(paths[n])), "wb"))
                             for n in names}
                    shapes = {n: [0] for n in names}
                    with torch.no_grad():
                        for frames in distinct_frame_batches(dataset.frames, used, batch_size=batch_size, device=self.device,
                                                    desc=f"ghvae cache h1..h{levels}"):
                            for n, h in zip(names, self.encode(frames, levels)):
                                files[n].write(DiskFeatures.bits(h, dtype))
                                shapes[n] = [shapes[n][0] + h.shape[0], *h.shape[1:]]
            finally:
                self.train(was_training)
            atomic_write_text(sidecar, json.dumps({"key": key, "shapes": shapes}))
        features = {n: DiskFeatures(paths[n], tuple(shapes[n]), dtype) for n in names}
        return FeatureCacheDataset(dataset, features, torch.as_tensor(index))

    def stage_dataset(self, dataset: Any, stage: str | None = None) -> Any:
        """For ``module{k}`` with k > 1: the clips plus cached h^1..h^{k-1} of the frozen modules."""
        stage = self.stage if stage is None else stage
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; stages: {list(self.stages)}")
        if not stage.startswith("module") or stage == "module1":
            return dataset
        if isinstance(dataset, FeatureCacheDataset):
            dataset = dataset.base
        return self.cache_features(dataset, int(stage[len("module"):]) - 1)

    # ------------------------------------------------------------------ inference
    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        frames, _ = self._rollout(context_frames, actions, num_samples, generator, horizon)
        return frames.view(-1, num_samples, horizon, 3, self.image_size, self.image_size)

    def _rollout(self, context_frames: Tensor, actions: Tensor | None, num_samples: int,
                 generator: torch.Generator | None, horizon: int, *, pixels: bool = True,
                 carry_deepest: bool = False) -> tuple[Tensor | None, Tensor]:
        """The one rollout behind `predict` and `predict_embeddings`, batched over B*S (sample index inner).

        Per step: prior step on h_t^d, z^d = mean + std * noise (one ``randn`` of the same shape per step, so a
        seed draws the same z in every mode), deepest decoder bottleneck y^d, predicted next feature
        ``h_t^d + next^d(y^d)``; with ``pixels`` also decoders d..1 down to x_{t+1}.
        The next step's h_{t+1}^d is the re-encoded predicted frame (default, as GHVAE predicts) or, with
        ``carry_deepest`` (implied when ``pixels`` is False), the predicted next feature itself.

        Returns frames ``[B*S, T, 3, H, W]`` (None without ``pixels``) and the predicted next features
        ``[B*S, T, C^d, H^d, W^d]``.
        """
        d, c, s = self.depth, self.context_frames, num_samples
        b = context_frames.shape[0]
        top = self.stack[d - 1]
        carry_deepest = carry_deepest or not pixels
        context = context_frames.repeat_interleave(s, dim=0)  # [B*S, C, 3, H, W]; sample index is the inner one
        if actions is not None:
            actions = actions.repeat_interleave(s, dim=0)  # [B*S, T, A]
        # A planner passes one context expanded over its candidates (stride 0): encode it once.
        shared = b > 1 and context_frames.stride(0) == 0
        source = context_frames[:1] if shared else context_frames  # [B or 1, C, 3, H, W]
        hs = [h.view(source.shape[0], c, *h.shape[1:]).expand(b, -1, -1, -1, -1).repeat_interleave(s, dim=0)
              for h in self.encode(source.flatten(0, 1), d)]  # d x [B*S, C, C^j, H^j, W^j]
        state = None
        zero_action = context.new_zeros(b * s, self.action_dim) if actions is not None else None
        for t in range(c - 1):  # warm the prior's state up on the context, as in training
            _, _, state = top.prior_step(hs[-1][:, t], zero_action, state)
        cur = [h[:, c - 1] for h in hs]
        frame = context[:, c - 1]
        out, feats = [], []
        for t in range(horizon):  # prior step + deepest decoder (+ decode + encode) per step, batched over B*S
            a_t = None if actions is None else actions[:, t]
            mean, logstd, state = top.prior_step(cur[-1], a_t, state)
            # Noise per (sample, step), shared by every batch row: candidates of a planner are ranked under common
            # random numbers, and a row predicted alone gets the very sample it got inside a batch.
            noise = torch.randn((s, *mean.shape[1:]), generator=generator, device=mean.device,
                                dtype=mean.dtype).repeat(b, 1, 1, 1)  # [B*S, Z^d, H^d, W^d]
            y = top.decoder.step(cur[-1], mean + logstd.exp() * noise, a_t)  # [B*S, C^d, H^d, W^d]
            nxt = top.predict_feature(cur[-1], y)                           # predicted h_{t+1}^d
            feats.append(nxt)
            if pixels:
                frame = self.decode(cur, None, frame, a_t, bottleneck=y)[0].clamp(0, 1)  # [B*S, 3, H, W]
                out.append(frame)
            if t + 1 < horizon:
                if not pixels:
                    cur = [nxt]
                elif carry_deepest:
                    cur = self.encode(frame, d - 1) + [nxt]
                else:
                    cur = self.encode(frame, d)
        frames = torch.stack(out, dim=1) if pixels else None
        return frames, torch.stack(feats, dim=1)

    # ------------------------------------------------------------------ features for policies and costs
    @property
    def feature_dim(self) -> int:
        return self.shapes[self.depth - 1].channels

    def features(self, frames: Tensor, actions: Tensor | None = None, *, frame_codes: Tensor | None = None) -> Tensor:
        """Per-frame ``[B, T, C^d]``: the deepest encoding h^d averaged over space (causal: frame t only).
        Wholly per-frame, so ``frame_codes`` (`frame_codes` of the same frames, cached by a policy) is the answer."""
        if frame_codes is not None:
            return frame_codes
        b, t = frames.shape[:2]
        return self.encode(frames.flatten(0, 1))[-1].mean(dim=(2, 3)).view(b, t, -1)

    def frame_codes(self, frames: Tensor) -> Tensor:
        """The per-frame part of `features` (all of it): ``[B, T, C^d]``."""
        return self.features(frames)

    @property
    def embedding_dim(self) -> int:
        if self.config.embedding == "readout":
            return 3 * self.config.readout_size**2
        shape = self.shapes[self.depth - 1]
        return shape.channels * shape.size**2

    def embed(self, frames: Tensor) -> Tensor:
        """``[..., 3, H, W]`` -> the model-space embedding ``[..., D]`` that `predict_embeddings` is compared to.

        ``embedding="deepest"``: the flattened deepest encoding h^d (D = C^d H^d W^d). ``"readout"``: the image
        itself, area-pooled to 3 x R x R (what the readout of h^d is trained to show; D = 3 R^2). The deepest
        encoding is not a metric space for the robot's pose: on Meta-World reach its distance to the goal's
        encoding was *anti*-correlated with the hand's distance to the goal (Spearman -0.16 to -0.89 over random
        plans, docs/planning.md), while the pooled image's distance correlates positively (0.64-0.94).
        """
        if self.config.embedding == "readout":
            return self._pooled(frames).flatten(-3)
        lead = frames.shape[:-3]
        return self.encode(frames.reshape(-1, *frames.shape[-3:]))[-1].flatten(1).view(*lead, -1)

    def _pooled(self, frames: Tensor) -> Tensor:
        """``[..., 3, H, W]`` area-pooled to ``[..., 3, R, R]``: what the readout head is trained to show."""
        r = self.config.readout_size
        return F.adaptive_avg_pool2d(frames.reshape(-1, *frames.shape[-3:]), r).view(*frames.shape[:-2], r, r)

    def state_embedding(self, h: Tensor) -> Tensor:
        """Deepest states ``[N, C^d, H^d, W^d]`` -> their embeddings ``[N, D]`` (comparable to `embed`)."""
        if self.config.embedding == "readout":
            return self.stack[self.depth - 1].read_out(h).flatten(1)
        return h.flatten(1)

    @torch.no_grad()
    def predict_embeddings(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                           horizon: int | None = None, generator: torch.Generator | None = None,
                           seed: int | None = None) -> Tensor:
        """Latent rollout at the deepest level: ``[B, S, T, D]``, comparable to ``embed(goal_image)``.

        Per step: prior step, z^d, the deepest decoder's bottleneck and the next-feature head give the predicted
        h_{t+1}^d, which is fed back; no pixel is decoded and no lower module runs after the context is encoded.
        These are exactly the deepest states that ``_rollout(..., carry_deepest=True)`` decodes into its frames
        under the same seed (tested). `predict` instead re-encodes every predicted frame, so from the second
        step its deepest states differ from these by the decode / re-encode round trip. Each state is returned
        as `state_embedding` (h^d itself, or its readout image).
        """
        b, horizon, (_, feats) = self._checked_rollout(context_frames, actions, num_samples, horizon, generator,
                                                       seed, pixels=False)
        return self.state_embedding(feats.flatten(0, 1)).view(b, num_samples, horizon, -1)

    @torch.no_grad()
    def predict_embedding_frames(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1,
                                 *, horizon: int | None = None, generator: torch.Generator | None = None,
                                 seed: int | None = None) -> Tensor:
        """The pixels of the rollout that `predict_embeddings` scores: ``[B, S, T, 3, H, W]``.

        The same seed gives the same z as `predict_embeddings` (noise is per sample and step, not per batch row),
        and the frames are decoded from exactly its deepest states (``carry_deepest``): what a planner that scored
        a candidate in model space should show as that candidate's imagined video.
        """
        _, horizon, (frames, _) = self._checked_rollout(context_frames, actions, num_samples, horizon, generator,
                                                        seed, carry_deepest=True)
        return frames.view(-1, num_samples, horizon, 3, self.image_size, self.image_size)

    def _checked_rollout(self, context_frames, actions, num_samples, horizon, generator, seed, **kwargs):
        """`_rollout` behind the public entry points: inputs checked as for `predict`, in eval mode.
        Returns (B, T, (frames, features))."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(generator, seed)
        was_training = self.training
        self.eval()
        try:
            out = self._rollout(context_frames, actions, num_samples, generator, horizon, **kwargs)
        finally:
            self.train(was_training)
        return context_frames.shape[0], horizon, out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_modules={self.num_modules}, depth={self.depth}"
