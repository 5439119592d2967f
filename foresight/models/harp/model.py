"""HARP (Seo et al. 2022): a VQ-GAN frame tokenizer and a causal transformer over the codes, action-conditioned.

Axis legend::

    B  batch (e.g. candidate action sequences)    S  samples    C  context frames    F  trained future frames
    T  frames      A  action dim      h = w = grid  codes per frame side      N = h*w      E  code width      D  width

Stages: ``tokenizer`` (VQ-GAN on single frames) then ``transformer`` (tokenizer frozen, codes cached once by
``stage_dataset``). See tokenizer.py, transformer.py and sampling.py for the details of each part.

    model = foresight.get_model_class("harp")(foresight.preset(HarpConfig, "tiny"))
    video = model.predict(context, actions, num_samples=2, seed=0)   # [B, 2, T, 3, H, W]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from foresight.data.cache import CachedCodes, FrameIndexedCodes, clip_frame_index, distinct_frame_batches
from foresight.models.harp.config import HarpConfig
from foresight.models.harp.sampling import sample_codes
from foresight.models.harp.tokenizer import VQGAN
from foresight.models.harp.transformer import CodeTransformer
from foresight.registry import register_model
from foresight.world_model import WorldModel, as_float_frames, check_frames

__all__ = ["Harp", "CachedCodes"]


@register_model("harp")
class Harp(WorldModel):
    """HARP world model. ``features`` reads the causal transformer (see `CodeTransformer.frame_features`)."""

    config_class = HarpConfig
    stages = ("tokenizer", "transformer")
    stage_modules = {"tokenizer": "tokenizer", "transformer": "transformer"}  # codebook: EMA buffers

    def __init__(self, config: HarpConfig):
        config.validate()
        super().__init__(config)
        self.tokenizer = VQGAN(config)
        self.transformer = CodeTransformer(config)

    # ------------------------------------------------------------------ stages
    # ------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode(self, frames: Tensor, *, batch_size: int = 256) -> Tensor:
        """frames [..., 3, H, W] in [0, 1] -> codes [..., h, w] int64 (frozen tokenizer, batched)."""
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        codes = [self.tokenizer.encode_codes(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)]
        g = self.config.grid
        return torch.cat(codes).view(*lead, g, g) if codes else flat.new_zeros(*lead, g, g, dtype=torch.long)

    @torch.no_grad()
    def decode(self, codes: Tensor, *, batch_size: int = 256) -> Tensor:
        """codes [..., h, w] -> frames [..., 3, H, W] in [0, 1]."""
        lead = codes.shape[:-2]
        flat = codes.reshape(-1, *codes.shape[-2:])
        out = [self.tokenizer.decode_codes(flat[i:i + batch_size]) for i in range(0, flat.shape[0], batch_size)]
        return torch.cat(out).view(*lead, 3, self.image_size, self.image_size)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        if self.stage == "tokenizer":
            return self._tokenizer_loss(batch)
        return self._transformer_loss(batch)

    def _tokenizer_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        frames = batch.get("frames")
        if frames is None:
            raise ValueError("the tokenizer stage trains on clip batches with 'frames' [B, T, 3, H, W]")
        frames = check_frames(as_float_frames(frames).to(self.device), name="batch['frames']",
                              image_size=self.image_size, check_range=False)
        k = self.config.tokenizer_frames_per_clip
        if 0 < k < frames.shape[1]:
            # a random subset of each clip's frames: consecutive frames are near-duplicates for an image model
            idx = torch.rand(frames.shape[:2], device=frames.device).argsort(dim=1)[:, :k]  # [B, k]
            frames = frames[torch.arange(frames.shape[0], device=frames.device)[:, None], idx]
        return self.tokenizer.loss(frames.flatten(0, 1))

    def _transformer_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        c, f = self.context_frames, self.future_frames
        if "codes" in batch:
            codes = batch["codes"].to(self.device).long()
        elif "frames" in batch:
            codes = self.encode(as_float_frames(batch["frames"]).to(self.device))
        else:
            raise ValueError("the transformer stage expects a batch with 'codes' (from stage_dataset) or 'frames'")
        if codes.ndim != 4 or codes.shape[1] < c + f:
            raise ValueError(f"expected codes [B, >= {c + f}, {self.config.grid}, {self.config.grid}], "
                             f"got {list(codes.shape)}")
        codes = codes[:, :c + f]
        context = None
        if self.config.context_resnet:
            context = batch["context"] if "context" in batch else batch["frames"][:, :c]
            context = as_float_frames(context).to(self.device)
        actions = None
        if self.action_dim > 0:
            if batch.get("actions") is None:
                raise ValueError(f"this HARP model is action-conditioned: the batch needs 'actions' [B, C+F-1, "
                                 f"{self.action_dim}]")
            actions = batch["actions"].to(self.device).float()[:, c - 1:c - 1 + f]  # [B, F, A] future actions
            if actions.shape[1] != f or actions.shape[2] != self.action_dim:
                raise ValueError(f"expected actions [B, >= {c + f - 1}, {self.action_dim}], "
                                 f"got {list(batch['actions'].shape)}")
        logits = self.transformer(codes, context, actions)  # [B, F*N, K]
        target = codes[:, c:].flatten(1)  # [B, F*N]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"ce": float(loss.detach()), "code_accuracy": float(acc)}

    def stage_dataset(self, dataset: Any, stage: str | None = None) -> Any:
        """Transformer stage: encode every clip once with the frozen tokenizer (a `CachedCodes`)."""
        stage = stage or self.stage
        if stage != "transformer":
            return dataset
        return self.cache_codes(dataset)

    @torch.no_grad()
    def cache_codes(self, dataset: Any, *, batch_size: int = 64) -> CachedCodes:
        """Codes of every clip of ``dataset``. A `foresight.data.ClipDataset` without augmentation is encoded
        frame by frame (each stored frame once, however many clips share it); other datasets clip by clip."""
        if self._is_plain_clip_dataset(dataset):
            return self._cache_clip_frames(dataset, batch_size=batch_size)
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        c = self.context_frames
        codes, extras = [], {"actions": [], "context": [], "task": []}
        try:
            for start in tqdm(range(0, len(dataset), batch_size), desc="HARP: caching codes", leave=False):
                items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                frames = torch.stack([torch.as_tensor(it["frames"]) for it in items])  # [b, T, 3, H, W]
                frames_f = as_float_frames(frames)
                codes.append(self.encode(frames_f.to(self.device)).cpu().to(
                    torch.int16 if self.config.codebook_size <= 32767 else torch.int32))
                if "actions" in items[0] and items[0]["actions"] is not None:
                    extras["actions"].append(torch.stack([torch.as_tensor(it["actions"]).float() for it in items]))
                if self.config.context_resnet:
                    extras["context"].append((frames_f[:, :c] * 255).round().to(torch.uint8))
                if "task" in items[0]:
                    extras["task"].append(torch.as_tensor([int(it["task"]) for it in items]))
        finally:
            self.train(was_training)
        return CachedCodes(torch.cat(codes), {k: torch.cat(v) for k, v in extras.items() if v})

    @staticmethod
    def _is_plain_clip_dataset(dataset: Any) -> bool:
        from foresight.data.frame_store import DiskFrames

        frames = getattr(dataset, "frames", None)
        return (isinstance(frames, (np.ndarray, DiskFrames)) and frames.ndim == 4 and 3 in (frames.shape[1], frames.shape[-1])
                and all(hasattr(dataset, a) for a in ("starts", "stride", "clip_length", "get_batch"))
                and getattr(dataset, "augment_shift", 1) == 0)

    @torch.no_grad()
    def _cache_clip_frames(self, dataset: Any, *, batch_size: int) -> CachedCodes:
        was_training = self.training
        self.eval()
        try:
            used, clip_rows = clip_frame_index(dataset)  # distinct frames [U], each clip's rows [clips, T]
            dtype = torch.int16 if self.config.codebook_size <= 32767 else torch.int32
            per_frame = torch.cat([self.encode(frames).cpu().to(dtype) for frames in distinct_frame_batches(
                dataset.frames, used, batch_size=batch_size, device=self.device, desc="HARP: caching frame codes")])
            extras: dict[str, list[Tensor]] = {"actions": [], "task": []}
            for i in range(0, len(clip_rows), 1024):
                batch = dataset.get_batch(np.arange(i, min(i + 1024, len(clip_rows))), augment=False)
                extras["actions"].append(batch["actions"].float())
                if "task" in batch:
                    extras["task"].append(batch["task"])
            out = {k: torch.cat(v) for k, v in extras.items() if v}
        finally:
            self.train(was_training)
        if self.config.context_resnet:  # context pixels read from the dataset's frames per item, not copied
            return FrameIndexedCodes(per_frame, torch.from_numpy(clip_rows), out, frames=dataset.frames,
                                     context_index=used[clip_rows[:, :self.context_frames]])
        return FrameIndexedCodes(per_frame, torch.from_numpy(clip_rows), out)

    # ------------------------------------------------------------------ prediction
    def _sample(self, context_frames: Tensor, actions: Tensor | None, num_samples: int,
                generator: torch.Generator | None, horizon: int, use_cache: bool = True) -> Tensor:
        ctx_codes = self.encode(context_frames)  # [B, C, h, w]
        ctx_pixels = context_frames if self.config.context_resnet else None
        return sample_codes(self.transformer, ctx_codes, ctx_pixels, actions, horizon=horizon,
                            num_samples=num_samples, top_k=self.config.top_k, temperature=self.config.temperature,
                            generator=generator, use_cache=use_cache)  # [B, S, T, h, w]

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        return self.decode(self._sample(context_frames, actions, num_samples, generator, horizon))

    # ------------------------------------------------------------------ features for policies and costs
    @property
    def feature_dim(self) -> int:
        return int(self.config.width)

    def frame_codes(self, frames: Tensor) -> Tensor:
        """The per-frame part of `features`: the tokenizer's codes [B, T, h, w] (a policy caches them)."""
        return self.encode(check_frames(frames, name="frames", image_size=self.image_size))

    def features(self, frames: Tensor, actions: Tensor | None = None, *, frame_codes: Tensor | None = None) -> Tensor:
        """Causal per-frame features [B, T, D] (D = width) of frames [B, T, 3, H, W], T <= C + F.

        Feature t = final hidden state of a read-out query at the first slot of frame t+1, attending to all codes
        of frames <= t (and, through the slots of future frames, to the action embeddings of actions < t); see
        `CodeTransformer.frame_features`. The first C frames play the context role (ResNet features added) as in
        training. Differentiable w.r.t. the transformer's parameters and, via the ResNet, the context pixels;
        codes are discrete, so no gradient reaches the pixels through the tokenizer. actions [B, T-1, A] with
        actions[:, t] from frame t to t+1 (None: no action embeddings). ``frame_codes``: `frame_codes` (frames),
        when already computed.
        """
        frames = check_frames(frames, name="frames", image_size=self.image_size)
        if frame_codes is None:
            codes = self.encode(frames)  # [B, T, h, w]
        else:
            g = self.config.grid
            if tuple(frame_codes.shape) != (*frames.shape[:2], g, g):
                raise ValueError(f"frame_codes: expected [B, T, {g}, {g}] codes for frames {list(frames.shape)}, "
                                 f"got {list(frame_codes.shape)}")
            codes = frame_codes.long()
        context = frames[:, :self.context_frames] if self.config.context_resnet else None
        if actions is not None and self.action_dim > 0:
            actions = actions.to(self.device).float()
        else:
            actions = None
        return self.transformer.frame_features(codes, context, actions)

    def embed(self, frames: Tensor) -> Tensor:
        """Frames [..., 3, H, W] -> quantized code vectors [..., N*E] (the codebook entries of the frame's codes)."""
        codes = self.encode(frames)
        return self.code_embedding(codes)

    def code_embedding(self, codes: Tensor) -> Tensor:
        """codes [..., h, w] -> [..., N*E] codebook vectors (raster order, flattened)."""
        return self.tokenizer.quantizer.lookup(codes).flatten(-3)

    @torch.no_grad()
    def predict_embeddings(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                           horizon: int | None = None, generator: torch.Generator | None = None,
                           seed: int | None = None) -> Tensor:
        """Like ``predict`` but skips the decoder: codebook vectors of the sampled codes [B, S, T, N*E]."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(generator, seed)
        was_training = self.training
        self.eval()
        try:
            codes = self._sample(context_frames, actions, num_samples, generator, horizon)
        finally:
            self.train(was_training)
        return self.code_embedding(codes)

    @torch.no_grad()
    def predict_codes(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                      horizon: int | None = None, seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Sampled future codes [B, S, T, h, w] (no decoding). ``use_cache=False`` recomputes every step."""
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        generator = self._generator(None, seed)
        was_training = self.training
        self.eval()
        try:
            return self._sample(context_frames, actions, num_samples, generator, horizon, use_cache=use_cache)
        finally:
            self.train(was_training)
