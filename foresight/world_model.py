"""The `WorldModel` contract: what planners, policies and robot code may rely on.

Axis legend used throughout the library::

    B  batch (e.g. candidate action sequences of a planner)
    S  samples per input (stochastic models draw S futures)
    C  context frames           T  predicted (future) frames
    A  action dimension         D  feature / embedding width
    H, W  image height and width (square: ``config.image_size``)

Conventions:

* Frames are ``float32 [B, T, 3, H, W]`` in [0, 1]. (On disk: ``uint8 [T, H, W, 3]``.)
* Actions are ``float32 [B, T, A]``; the action at index t moves frame t to frame t+1. For ``predict`` the
  actions are the *future* ones: ``actions[:, 0]`` moves the last context frame to the first predicted frame.
* A clip batch for training is a dict with ``frames [B, C+F, 3, H, W]``, ``actions [B, C+F-1, A]`` and
  optionally ``states`` and ``task``.

Every model's config is a dataclass with at least ``image_size``, ``action_dim`` (0 = action-free),
``context_frames`` and ``future_frames`` (the length it was trained to predict).

Using a model::

    import foresight, torch
    model = foresight.load("runs/harp/metaworld/checkpoints/last")          # any registered model type
    context = torch.rand(1, model.context_frames, 3, 64, 64)                 # [B, C, 3, H, W] in [0, 1]
    actions = torch.zeros(200, 10, model.action_dim)                         # 200 candidate plans
    video = model.predict(context.expand(200, -1, -1, -1, -1), actions, seed=0)  # [200, 1, 10, 3, 64, 64]

Implementing a model: subclass `WorldModel`, decorate with ``@register_model("name")``, set ``config_class``
and ``stages``, and implement ``_predict`` and ``loss`` (``features`` / ``embed`` when the model offers them).
"""

from __future__ import annotations

import abc
import json
import operator
from pathlib import Path
from typing import Any, ClassVar, Iterable

import torch
from torch import Tensor, nn

from foresight import checkpoint as ckpt
from foresight.config import ConfigError, from_dict, to_dict
from foresight.registry import get_model_class

__all__ = ["WorldModel", "load", "check_frames", "check_actions"]


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {list(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def as_float_frames(x: Tensor) -> Tensor:
    """Frames as float: uint8 [0, 255] -> [0, 1], any other dtype cast to float32 unchanged in value."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def check_frames(
    frames: Any,
    *,
    name: str,
    image_size: int | None = None,
    ndim: int = 5,
    min_frames: int | None = None,
    check_range: bool = True,
) -> Tensor:
    """Validate a frames tensor ``[B, T, 3, H, W]`` (``ndim=5``) or ``[B, 3, H, W]`` (``ndim=4``).

    Raises ValueError naming the expected and received shape, dtype or value range.
    """
    layout = "[B, T, 3, H, W]" if ndim == 5 else "[B, 3, H, W]"
    size = f"{image_size}" if image_size is not None else "H"
    expected = layout.replace("H, W", f"{size}, {size}" if image_size is not None else "H, W")
    if not isinstance(frames, Tensor):
        raise ValueError(f"{name}: expected a float tensor {expected} in [0, 1], got {_describe(frames)}")
    if not frames.is_floating_point():
        raise ValueError(
            f"{name}: expected a float tensor {expected} in [0, 1], got dtype {frames.dtype} "
            "(convert uint8 images with frames.float() / 255 and move channels first)"
        )
    if frames.ndim != ndim or frames.shape[-3] != 3:
        raise ValueError(f"{name}: expected shape {expected}, got {list(frames.shape)}")
    if image_size is not None and tuple(frames.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"{name}: expected {image_size}x{image_size} frames (shape {expected}), got {list(frames.shape)}"
        )
    if min_frames is not None and frames.shape[1] < min_frames:
        raise ValueError(f"{name}: expected at least {min_frames} frames on axis 1, got {list(frames.shape)}")
    if check_range and frames.numel():
        lo, hi = float(frames.min()), float(frames.max())
        if lo < -1e-3 or hi > 1 + 1e-3 or lo != lo or hi != hi:
            raise ValueError(f"{name}: expected values in [0, 1], got min {lo:.4g}, max {hi:.4g}")
    return frames


def check_actions(actions: Any, *, name: str, action_dim: int, batch: int | None = None,
                  steps: int | None = None) -> Tensor:
    """Validate an actions tensor ``[B, T, A]`` with ``A == action_dim``."""
    expected = f"[{batch if batch is not None else 'B'}, {steps if steps is not None else 'T'}, {action_dim}]"
    if not isinstance(actions, Tensor) or not actions.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor {expected}, got {_describe(actions)}")
    if actions.ndim != 3 or actions.shape[-1] != action_dim:
        raise ValueError(f"{name}: expected shape {expected} (action_dim={action_dim}), got {list(actions.shape)}")
    if batch is not None and actions.shape[0] != batch:
        raise ValueError(f"{name}: expected batch {batch} to match the context frames, got {list(actions.shape)}")
    if steps is not None and actions.shape[1] != steps:
        raise ValueError(f"{name}: expected {steps} steps, got {list(actions.shape)}")
    if not torch.isfinite(actions).all():
        raise ValueError(f"{name}: actions contain NaN or inf")
    return actions


def _count(value: Any, name: str) -> int:
    """A positive integer argument: ints and integer-like numbers (``np.int64``, 0-dim integer tensors) are
    accepted; bools, floats and strings are refused (``2.0`` samples is almost always a bug upstream)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__})")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__})") from None
    if count < 1:
        raise ValueError(f"{name}: expected a positive int, got {count}")
    return count


class WorldModel(nn.Module, abc.ABC):
    """An action-conditioned video predictor.

    Subclasses provide:

    * ``config_class``: the dataclass config (with ``image_size``, ``action_dim``, ``context_frames``,
      ``future_frames`` and a ``PRESETS`` dict for ``tiny`` / ``quick`` / ``paper``);
    * ``stages``: the names of the training stages in order (e.g. ``("tokenizer", "transformer")``);
      single-stage models keep the default ``("all",)``;
    * ``_predict(context_frames, actions, num_samples, generator, horizon)`` -> ``[B, S, T, 3, H, W]``;
    * ``loss(batch) -> (loss, metrics)`` for the current stage;
    * ``stage_modules`` (``{stage: submodule attribute}``) or ``stage_parameters(stage)`` when the model has
      several stages;
    * optionally ``features`` (for policy heads) and ``embed`` / ``predict_embeddings`` (for planning costs
      that skip decoding).
    """

    type: ClassVar[str] = ""  # set by @register_model
    config_class: ClassVar[type] = object
    stages: ClassVar[tuple[str, ...]] = ("all",)
    stage_modules: ClassVar[dict[str, str]] = {}  # stage -> the attribute holding the submodule it trains

    def __init__(self, config: Any):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.stage = self.stages[0]
        self.stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ shape facts
    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def action_dim(self) -> int:
        return int(self.config.action_dim)

    @property
    def context_frames(self) -> int:
        return int(self.config.context_frames)

    @property
    def future_frames(self) -> int:
        return int(self.config.future_frames)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(
        self,
        context_frames: Tensor,
        actions: Tensor | None = None,
        num_samples: int = 1,
        *,
        horizon: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Imagine the future.

        Args:
            context_frames: ``[B, C', 3, H, W]`` float in [0, 1] with ``C' >= context_frames``; only the last
                ``context_frames`` are used, so a controller may pass its whole history.
            actions: ``[B, T, A]`` future actions (``actions[:, 0]`` acts on the last context frame). ``None``
                for an action-free model, which then needs ``horizon``.
            num_samples: S futures per input (stochastic models differ between samples).
            horizon: T when ``actions`` is None.
            generator / seed: randomness source; the same seed gives the same output.

        Returns:
            ``[B, S, T, 3, H, W]`` float in [0, 1].
        """
        context_frames, actions, horizon = self._check_predict_inputs(context_frames, actions, num_samples, horizon)
        num_samples = _count(num_samples, "num_samples")  # a plain int for _predict (np.int64 accepted above)
        generator = self._generator(generator, seed)
        was_training = self.training
        self.eval()
        try:
            out = self._predict(context_frames, actions, num_samples, generator, horizon)
        finally:
            self.train(was_training)
        expected = (context_frames.shape[0], num_samples, horizon, 3, self.image_size, self.image_size)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"{type(self).__name__}._predict returned {list(out.shape)}, expected {list(expected)}")
        return out

    @abc.abstractmethod
    def _predict(self, context_frames: Tensor, actions: Tensor | None, num_samples: int,
                 generator: torch.Generator | None, horizon: int) -> Tensor:
        """Validated inputs: context ``[B, C, 3, H, W]`` (exactly ``context_frames``), actions ``[B, T, A]``
        on the model's device (or None). Return ``[B, S, T, 3, H, W]`` in [0, 1]."""

    def _check_predict_inputs(self, context_frames, actions, num_samples, horizon):
        context_frames = check_frames(context_frames, name="context_frames", image_size=self.image_size,
                                      min_frames=self.context_frames)
        batch = context_frames.shape[0]
        if batch == 0:
            raise ValueError(
                f"context_frames: expected a batch of at least 1 clip, got shape {list(context_frames.shape)}")
        _count(num_samples, "num_samples")
        if actions is None:
            if self.action_dim > 0:
                raise ValueError(f"actions: this model is action-conditioned and expects [B, T, {self.action_dim}], got None")
            if horizon is None:
                raise ValueError("horizon: an action-free model needs horizon=T (a positive int) when actions is None")
            horizon = _count(horizon, "horizon")
        else:
            if self.action_dim == 0:
                raise ValueError(f"actions: this model is action-free; pass actions=None and horizon=T, got {_describe(actions)}")
            actions = check_actions(actions, name="actions", action_dim=self.action_dim, batch=batch)
            if actions.shape[1] == 0:
                raise ValueError(f"actions: expected at least 1 future step [B, T >= 1, {self.action_dim}], "
                                 f"got {list(actions.shape)} (nothing to predict)")
            if horizon is not None and _count(horizon, "horizon") != actions.shape[1]:
                raise ValueError(f"horizon={horizon} disagrees with actions of {actions.shape[1]} steps")
            horizon = actions.shape[1]
            actions = actions.to(self.device, torch.float32)
        context_frames = context_frames[:, -self.context_frames:].to(self.device, torch.float32)
        self.use_channels_last()  # every prediction path checks its inputs here first
        return context_frames, actions, int(horizon)

    def use_channels_last(self) -> None:
        """Store the convolution weights channels-last (NHWC), once (prediction calls this).

        oneDNN on CPU and cuDNN on GPU run NHWC convolutions faster than NCHW ones; the values do not change
        (outputs agree to float rounding) and the parameters stay the same objects, so optimisers and
        checkpoints are unaffected. Measured on `benchmarks/bench_predict.py` (docs/performance.md).
        """
        if getattr(self, "_channels_last", False):
            return
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.weight.dim() == 4:
                    module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
        self._channels_last = True

    def _generator(self, generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        if seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(seed))
        return generator

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss of the current ``stage`` on a clip batch; returns (scalar loss, metrics)."""

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        # forward == loss, so that DistributedDataParallel (which hooks forward) wraps training correctly.
        return self.loss(batch)

    def stage_parameters(self, stage: str) -> Iterable[nn.Parameter]:
        """Parameters trained in ``stage``: those of the submodule ``stage_modules[stage]``; single-stage models
        (no ``stage_modules``) train everything."""
        if not self.stage_modules:
            return self.parameters()
        if stage not in self.stage_modules:
            raise ValueError(f"unknown stage {stage!r}; stages: {list(self.stages)}")
        return getattr(self, self.stage_modules[stage]).parameters()

    def clip_frames(self, batch: dict[str, Any]) -> Tensor:
        """A clip batch's ``frames`` as float ``[B, C+F, 3, H, W]`` on the model's device, checked and cut to
        ``context_frames + future_frames`` (for losses that train on whole clips)."""
        frames = batch.get("frames")
        if frames is None:
            raise ValueError(f"the {self.stage} stage trains on clip batches with 'frames' [B, C+F, 3, H, W]")
        frames = check_frames(as_float_frames(frames).to(self.device), name="batch['frames']",
                              image_size=self.image_size, check_range=False)
        length = self.context_frames + self.future_frames
        if frames.shape[1] < length:
            raise ValueError(f"batch['frames']: expected clips of at least context_frames + future_frames = "
                             f"{length} frames, got {list(frames.shape)}")
        return frames[:, :length]

    def set_stage(self, stage: str) -> "WorldModel":
        """Select the training stage: only its parameters keep ``requires_grad``."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r} for {type(self).__name__}; stages: {list(self.stages)}")
        self.stage = stage
        trainable = {id(p) for p in self.stage_parameters(stage)}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        return self

    def stage_dataset(self, dataset: Any, stage: str | None = None) -> Any:
        """The dataset ``loss`` trains on in ``stage``, built from a clip dataset.

        Models whose later stages read frozen outputs of earlier ones (HARP's codes, GHVAE's lower modules)
        return a cached dataset here so the frozen part never re-runs per epoch. Default: the clips as they are.
        """
        return dataset

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def sample_video(self, batch: dict[str, Any], *, num_samples: int = 1, seed: int = 0) -> dict[str, Tensor] | None:
        """Context / truth / prediction of a clip batch, for the trainer's periodic sample videos."""
        frames = batch["frames"]
        c = self.context_frames
        future = frames[:, c:]
        actions = batch.get("actions")
        if actions is not None and self.action_dim > 0:
            actions = actions[:, c - 1: c - 1 + future.shape[1]]
        else:
            actions = None
        pred = self.predict(frames[:, :c], actions, num_samples, horizon=future.shape[1], seed=seed)
        return {"context": frames[:, :c], "truth": future, "prediction": pred}

    # ------------------------------------------------------------------ features for policies and costs
    @property
    def feature_dim(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not offer features for policy heads")

    def features(self, frames: Tensor, actions: Tensor | None = None) -> Tensor:
        """Causal per-frame features ``[B, T, D]`` of frames ``[B, T, 3, H, W]`` (feature t sees frames <= t
        and actions < t). Used by behaviour-cloning heads; differentiable.

        Optional companion: a model whose features start with work done on each frame alone (HARP: tokenizer
        codes) may offer ``frame_codes(frames) -> [B, T, ...]`` and accept ``features(..., frame_codes=codes)``;
        a policy then encodes each incoming frame once instead of once per window position."""
        raise NotImplementedError(f"{type(self).__name__} does not offer features for policy heads")

    @property
    def supports_embeddings(self) -> bool:
        return type(self).embed is not WorldModel.embed

    def embed(self, frames: Tensor) -> Tensor:
        """Model-space embedding ``[..., D]`` of frames ``[..., 3, H, W]`` (for planning costs)."""
        raise NotImplementedError(f"{type(self).__name__} offers no model-space embedding")

    @torch.no_grad()
    def predict_embeddings(self, context_frames: Tensor, actions: Tensor | None = None, num_samples: int = 1, *,
                           horizon: int | None = None, generator: torch.Generator | None = None,
                           seed: int | None = None) -> Tensor:
        """Like ``predict`` but returns model-space embeddings ``[B, S, T, D]``, in the space of ``embed`` so that
        ``embed(goal_image) [B, D]`` can be compared with step t of each sample (a planning cost).

        Default: ``embed(predict(...))``. Models that can skip decoding override this with a latent rollout,
        which need not equal the default exactly; each such model states (and tests) what it equals. GHVAE rolls
        out at its deepest level: its embeddings are (the readout images of) the deepest states its pixel rollout
        decodes when that rollout carries the deepest level instead of re-encoding each frame (same seed, same
        noise).

        An embedding is only a good cost if distance in it tracks progress toward the goal: check with
        ``benchmarks/cost_validity.py`` (GHVAE's raw deepest encoding failed that test; its readout passes)."""
        frames = self.predict(context_frames, actions, num_samples, horizon=horizon, generator=generator, seed=seed)
        return self.embed(frames)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, *, stats: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (with ``type``), ``model.safetensors`` and ``stats.json`` atomically."""
        directory = Path(directory)
        with ckpt.atomic_directory(directory) as tmp:
            self.write_pretrained_files(tmp, stats=stats)
        return directory

    def write_pretrained_files(self, directory: Path, *, stats: dict[str, Any] | None = None) -> None:
        """Write the model files into an existing (temporary) directory; see ``save_pretrained``."""
        stats = self.stats if stats is None else stats
        meta = {"type": self.type, "config": to_dict(self.config), "stage": self.stage}
        (directory / ckpt.CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        ckpt.save_weights(self, directory / ckpt.WEIGHTS_NAME)
        if stats:
            (directory / ckpt.STATS_NAME).write_text(json.dumps(stats, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, map_location: str | torch.device = "cpu") -> "WorldModel":
        """Rebuild the model saved in ``directory`` (a model dir, a checkpoints dir or a run dir)."""
        directory = ckpt.resolve_checkpoint(directory)
        meta = ckpt.read_json(directory / ckpt.CONFIG_NAME, what="model config")
        if not isinstance(meta, dict) or "type" not in meta or "config" not in meta:
            raise ckpt.CheckpointError(
                f"corrupt model config {directory / ckpt.CONFIG_NAME}: expected keys 'type' and 'config'")
        config_path = directory / ckpt.CONFIG_NAME
        try:
            model_cls = get_model_class(meta["type"])
        except KeyError as e:
            raise ckpt.CheckpointError(f"model config {config_path}: {e.args[0]}") from None
        if cls is not WorldModel and not issubclass(model_cls, cls):
            raise ckpt.CheckpointError(
                f"{directory} holds a {meta['type']!r} model ({model_cls.__name__}), not a {cls.__name__}")
        try:
            config = from_dict(model_cls.config_class, meta["config"])
        except ConfigError as e:  # a wrong-typed value or an unknown key: say which file holds it
            raise ckpt.CheckpointError(
                f"model config {config_path} does not fit {model_cls.config_class.__name__}: {e}") from None
        model = model_cls(config)
        ckpt.load_weights(model, directory / ckpt.WEIGHTS_NAME, device=map_location)
        model.to(map_location)
        stage = meta.get("stage")
        if stage in model.stages:
            # set_stage, not a bare assignment: the loaded model freezes what the saved one froze. Frozen and
            # trainable weights can take different CPU kernels (nn.Linear on [..., L, Ch] inputs differs in the
            # last bit), so a round trip predicts bit-identically only with the same requires_grad pattern.
            model.set_stage(stage)
        stats_path = directory / ckpt.STATS_NAME
        if stats_path.exists():
            model.stats = ckpt.read_json(stats_path, what="data stats")
        return model.eval()

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"type={self.type!r}, stage={self.stage!r}"


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> WorldModel:
    """Load any saved world model: ``foresight.load("runs/.../checkpoints/last")``."""
    return WorldModel.from_pretrained(path, map_location=map_location)
