"""Behaviour cloning on top of a feature backbone, with an auxiliary inverse-dynamics head (HARP App. A.4).

What is trained (clip batch: frames ``[B, T, 3, H, W]``, actions ``[B, T-1, A]``, action t moves frame t to t+1)::

    f = backbone.features(frames)                 # [B, T, D], causal: f[:, t] has seen frames 0..t only
    bc_mse      = MSE(policy_head(f[:, t]), a_t)                    for t = 0 .. T-2
    inverse_mse = MSE(inverse_head([f[:, t], f[:, t+1]]), a_t)      for t = 0 .. T-2
    loss        = bc_mse + inverse_weight * inverse_mse

The policy head reads the causal feature of frame t and predicts the action taken AT frame t (the one that leads
to frame t+1); the last frame has no action label and is not used by the head. At test time only the policy
head acts: on a window of the last ``history`` frames it outputs ``policy_head(f[:, -1])``, the action for the
newest frame. The inverse-dynamics head (Dasari & Gupta 2020, "Transformers for one-shot visual imitation")
sees two consecutive features and is used only as an auxiliary loss that shapes the shared representation:
features must carry what changed between frames, i.e. the effect of the robot's action. It never acts.

Both heads are "2-layer" MLPs: Linear(in, hidden) -> ReLU -> Linear(hidden, A). Features are always computed
action-free (``actions=None``), in training and at test time alike: the Meta-World world model is pretrained
action-free and a policy must not see the action it is asked to predict.

Fine-tuning: every backbone parameter whose ``requires_grad`` is True when the policy is built is trained with
the heads; parameters that are frozen then stay frozen (their names are saved with the checkpoint and
re-applied on load), and submodules that are entirely frozen are kept in eval mode while training, so their
buffers (BatchNorm statistics) do not move either. For a multi-stage `WorldModel` the policy first selects the
model's fine-tuning stage (``backbone_stage``; for HARP "transformer": the transformer trains, the VQ tokenizer
stays frozen). ``freeze_backbone=True`` trains the heads only (a linear-probe style ablation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight import checkpoint as ckpt
from foresight.config import ConfigError, from_dict, merge, preset, to_dict
from foresight.world_model import WorldModel, check_frames

from agents.policies.backbones import backbone_spec, build_backbone, make_backbone, reinit_stage
from agents.policies.base import Policy, register_policy

__all__ = ["BCConfig", "BCPolicy", "make_bc_policy", "METHODS"]

METHODS = ("harp", "vq_transformer", "cnn_lstm", "cnn_transformer")


@dataclass
class BCConfig:
    """Behaviour-cloning policy settings (the backbone has its own config)."""

    action_dim: int = 4
    image_size: int = 64
    history: int = 12              # frames per window, at training (clip length) and at test time
    hidden_dim: int = 256          # hidden width of the policy and inverse-dynamics MLPs
    inverse_weight: float = 1.0    # weight of the inverse-dynamics auxiliary loss (0 disables its gradient)
    freeze_backbone: bool = False  # train the heads only
    backbone_stage: str | None = None  # WorldModel stage selected before fine-tuning (HARP: "transformer")
    method: str = ""               # label: harp / vq_transformer / cnn_lstm / cnn_transformer / custom

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 16, "history": 4, "hidden_dim": 32},
        "quick": {"hidden_dim": 256},
        "paper": {"hidden_dim": 512},
    }


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


@register_policy("bc")
class BCPolicy(Policy):
    """A feature backbone + policy MLP (acts) + inverse-dynamics MLP (auxiliary loss).

    ``backbone``: any module with ``features(frames [B, T, 3, H, W], actions=None) -> [B, T, D]`` (causal) and
    ``feature_dim`` (a foresight `WorldModel`, `CNNLSTM`, `CNNTransformer`). It becomes a submodule and is
    fine-tuned in place.
    """

    def __init__(self, backbone: nn.Module, *, config: BCConfig):
        super().__init__()
        if not isinstance(config, BCConfig):
            raise TypeError(f"BCPolicy expects a BCConfig, got {type(config).__name__}")
        if not hasattr(backbone, "features"):
            raise TypeError(f"backbone {type(backbone).__name__} has no features(frames, actions=None) method")
        if config.history < 1:
            raise ValueError(f"history: expected >= 1 frames, got {config.history}")
        backbone_size = getattr(backbone, "image_size", None)
        if backbone_size is not None and int(backbone_size) != config.image_size:
            raise ValueError(f"image_size {config.image_size} does not match the backbone's {backbone_size}")
        self.config = config
        self.backbone = backbone
        d = int(backbone.feature_dim)
        self.policy_head = _mlp(d, config.hidden_dim, config.action_dim)
        self.inverse_head = _mlp(2 * d, config.hidden_dim, config.action_dim)

        if config.backbone_stage is not None:
            if not isinstance(backbone, WorldModel):
                raise ValueError(f"backbone_stage={config.backbone_stage!r} needs a WorldModel backbone, "
                                 f"got {type(backbone).__name__}")
            backbone.set_stage(config.backbone_stage)  # e.g. HARP: transformer trainable, tokenizer frozen
        if config.freeze_backbone:
            backbone.requires_grad_(False)
        self._apply_frozen({f"backbone.{n}" for n, p in backbone.named_parameters() if not p.requires_grad})

    # ------------------------------------------------------------------ freezing
    def _apply_frozen(self, names: set[str]) -> None:
        params = dict(self.named_parameters())
        unknown = sorted(names - set(params))
        if unknown:
            raise ValueError(f"frozen parameter names not in this policy: {unknown[:5]}")
        self._frozen_names = set(names)
        for n, p in params.items():
            p.requires_grad_(n not in names)
        # topmost submodules whose parameters are all frozen: kept in eval mode during training
        self._frozen_modules: list[nn.Module] = []
        frozen_prefixes: list[str] = []
        for name, module in self.named_modules():
            if not name or any(name.startswith(p + ".") for p in frozen_prefixes):
                continue
            own = [f"{name}.{n}" for n, _ in module.named_parameters()]
            if own and all(n in names for n in own):
                self._frozen_modules.append(module)
                frozen_prefixes.append(name)
        self.train(self.training)

    @property
    def frozen_parameter_names(self) -> list[str]:
        return sorted(self._frozen_names)

    def train(self, mode: bool = True) -> "BCPolicy":
        super().train(mode)
        if mode:
            for module in getattr(self, "_frozen_modules", ()):
                module.eval()
        return self

    def set_stage(self, stage: str) -> "BCPolicy":
        super().set_stage(stage)
        self._apply_frozen(self._frozen_names)  # the Trainer calls this: re-assert which parameters train
        return self

    # ------------------------------------------------------------------ model
    def features(self, frames: Tensor, codes: Tensor | None = None) -> Tensor:
        """frames ``[B, T, 3, H, W]`` in [0, 1] -> causal per-frame features ``[B, T, D]`` (action-free).
        ``codes``: the backbone's ``frame_codes(frames)``, when already computed."""
        if codes is None:
            feats = self.backbone.features(frames, None)
        else:
            feats = self.backbone.features(frames, None, frame_codes=codes)
        if feats.ndim != 3 or tuple(feats.shape[:2]) != tuple(frames.shape[:2]):
            raise RuntimeError(f"backbone.features returned {list(feats.shape)} for frames {list(frames.shape)}, "
                               f"expected [B, T, D]")
        return feats

    def predict_actions(self, frames: Tensor) -> Tensor:
        """Policy-head actions ``[B, T, A]`` for every frame of a clip (action t from frames 0..t); unclipped."""
        frames = check_frames(frames, name="frames", image_size=self.image_size, check_range=False)
        return self.policy_head(self.features(frames))

    def encode_frames(self, frames: Tensor) -> Tensor | None:
        """The backbone's per-frame codes (``frame_codes``: HARP's tokens, the CNNs' ResNet features), if it has
        them; `Policy.select_action` caches them so each frame is encoded once."""
        frame_codes = getattr(self.backbone, "frame_codes", None)
        return None if frame_codes is None else frame_codes(frames)

    def act(self, frames: Tensor, codes: Tensor | None = None) -> Tensor:
        return self.policy_head(self.features(frames, codes)[:, -1])  # newest frame's feature -> [N, A]

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a clip batch ``{'frames' [B, T, 3, H, W], 'actions' [B, T-1, A]}``."""
        frames = check_frames(batch["frames"], name="batch['frames']", image_size=self.image_size, min_frames=2,
                              check_range=False)
        actions = batch["actions"]
        b, t = frames.shape[:2]
        expected = (b, t - 1, self.action_dim)
        if not isinstance(actions, Tensor) or tuple(actions.shape) != expected:
            shape = list(actions.shape) if isinstance(actions, Tensor) else type(actions).__name__
            raise ValueError(f"batch['actions']: expected shape {list(expected)} (one action between consecutive "
                             f"frames), got {shape}")
        actions = actions.float()
        feats = self.features(frames)  # [B, T, D]
        pred = self.policy_head(feats[:, :-1])  # feature of frame t -> a_t: [B, T-1, A]
        bc_mse = F.mse_loss(pred.float(), actions)
        pairs = torch.cat([feats[:, :-1], feats[:, 1:]], dim=-1)  # [B, T-1, 2D]
        inverse_mse = F.mse_loss(self.inverse_head(pairs).float(), actions)
        loss = bc_mse + self.config.inverse_weight * inverse_mse
        return loss, {"bc_mse": float(bc_mse.detach()), "inverse_mse": float(inverse_mse.detach())}

    # ------------------------------------------------------------------ persistence
    def _checkpoint_meta(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "backbone": backbone_spec(self.backbone),
                "frozen": self.frozen_parameter_names}

    @classmethod
    def _from_checkpoint_meta(cls, meta: dict[str, Any], *, config_path: Path) -> "BCPolicy":
        try:
            config = from_dict(BCConfig, meta["config"])
            backbone = build_backbone(meta["backbone"])
            # the saved frozen set is authoritative: do not re-run set_stage / freeze on the rebuilt backbone
            policy = cls(backbone, config=merge(config, {"backbone_stage": None, "freeze_backbone": False}))
            policy.config = config
            policy._apply_frozen(set(meta.get("frozen", [])))
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ckpt.CheckpointError(f"policy config {config_path} cannot rebuild the policy: {e!r}") from e
        return policy

    def extra_repr(self) -> str:
        return f"method={self.config.method!r}, history={self.history}, action_dim={self.action_dim}"


def _world_model_history(model: WorldModel) -> int:
    # HARP's transformer positions cover context + future frames; features accept at most that many.
    return int(model.context_frames + model.future_frames)


def make_bc_policy(method: str, *, backbone_model: WorldModel | None = None, preset: str = "quick",
                   action_dim: int = 4, image_size: int = 64, history: int | None = None,
                   hidden_dim: int | None = None, inverse_weight: float = 1.0, freeze_backbone: bool = False,
                   copy_backbone: bool = True, seed: int = 0, **backbone_overrides: Any) -> BCPolicy:
    """Build one of the four MT50 imitation methods of HARP Sec. 5.3.

    * ``harp``: the pretrained world model ``backbone_model`` fine-tuned in its last stage (HARP: transformer;
      the tokenizer stays frozen);
    * ``vq_transformer``: the same architecture with that stage re-initialised (`reinit_stage`, ``seed``);
    * ``cnn_lstm`` / ``cnn_transformer``: CNN backbones from ``preset`` (``tiny`` / ``quick`` / ``paper``),
      with field overrides ``backbone_overrides`` (e.g. ``dim=128``), initialised from ``seed``.

    ``history`` (frames per window; train on clips of this length) defaults to the world model's
    context + future frames, or 12 (1 + 11, the Meta-World clip length) for the CNN baselines.
    ``copy_backbone`` deep-copies ``backbone_model`` first, so one loaded model can seed several policies.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    config = _bc_preset(preset)
    changes: dict[str, Any] = {"action_dim": action_dim, "image_size": image_size, "inverse_weight": inverse_weight,
                               "freeze_backbone": freeze_backbone, "method": method}
    if hidden_dim is not None:
        changes["hidden_dim"] = hidden_dim
    if method in ("harp", "vq_transformer"):
        if not isinstance(backbone_model, WorldModel):
            raise ValueError(f"method {method!r} needs the pretrained world model: pass backbone_model=<WorldModel>, "
                             f"got {type(backbone_model).__name__}")
        if backbone_overrides:
            raise ValueError(f"backbone overrides {sorted(backbone_overrides)} only apply to the CNN baselines")
        limit = _world_model_history(backbone_model)
        history = limit if history is None else history
        if history > limit:
            raise ValueError(f"history={history} exceeds the world model's context + future frames ({limit})")
        model = copy.deepcopy(backbone_model) if copy_backbone else backbone_model
        stage = model.stages[-1]  # the last stage is the one that reads frames over time (HARP: transformer)
        if method == "vq_transformer":
            reinit_stage(model, stage, seed=seed)
        changes.update(history=history, backbone_stage=stage if len(model.stages) > 1 else None)
        backbone: nn.Module = model
    else:
        if backbone_model is not None:
            raise ValueError(f"method {method!r} builds its own CNN backbone; do not pass backbone_model")
        history = 12 if history is None else history
        changes["history"] = history
        overrides = {"image_size": image_size, **backbone_overrides}
        if method == "cnn_transformer":
            overrides.setdefault("max_frames", max(history, 16))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = make_backbone(method, preset, **overrides)
    config = merge(config, changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return BCPolicy(backbone, config=config)


def _bc_preset(name: str) -> BCConfig:
    return preset(BCConfig, name)
