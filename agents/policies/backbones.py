"""Feature backbones for behaviour cloning: anything with ``features(frames, actions=None) -> [B, T, D]``.

Three kinds are used (HARP Sec. 5.3 / App. A.4):

* a foresight `WorldModel` (HARP: its causal transformer's per-frame hidden state; with the transformer
  re-initialised by `reinit_stage` it is the "VQ-Transformer" baseline);
* `CNNLSTM`: a ResNet per frame, then an LSTM over time (paper: ResNet-50 + 4-layer LSTM);
* `CNNTransformer`: a ResNet per frame, then a causal transformer (paper: ResNet-50 + 12 layers).

Both CNN backbones are causal (feature t sees frames <= t) and take no actions. Their ResNets are built from
torchvision's BasicBlock / Bottleneck with random initialisation (no pretrained download) and GroupNorm by
default, so a frame's feature never depends on the other frames in the batch and train / eval behave the
same (``norm="batch"`` gives the classic BatchNorm ResNet).

Checkpoints describe a backbone by `backbone_spec` (JSON) and rebuild it with `build_backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from foresight.config import from_dict, preset, to_dict
from foresight.nn.conv import group_norm
from foresight.nn.transformer import CausalTransformer
from foresight.registry import get_model_class
from foresight.world_model import WorldModel, check_frames

__all__ = ["CNNBackboneConfig", "CNNLSTMConfig", "CNNTransformerConfig", "ResNetEncoder", "CNNLSTM",
           "CNNTransformer", "BACKBONES", "make_backbone", "backbone_spec", "build_backbone", "reinit_stage"]


@dataclass
class CNNBackboneConfig:
    """The per-frame ResNet shared by both CNN backbones."""

    image_size: int = 64
    block: str = "basic"                              # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50)
    widths: tuple[int, ...] = (32, 64, 128, 256)     # stage widths (bottleneck outputs 4x these)
    blocks: tuple[int, ...] = (1, 1, 1, 1)           # residual blocks per stage; stages after the first halve H, W
    stem: str = "imagenet"                           # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "conv": 3x3/1 conv
    norm: str = "group"                              # "group" (GroupNorm) or "batch" (BatchNorm)
    dim: int = 256                                   # feature width D (projection of the pooled ResNet output)

    def validate(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block: expected 'basic' or 'bottleneck', got {self.block!r}")
        if self.stem not in ("imagenet", "conv"):
            raise ValueError(f"stem: expected 'imagenet' or 'conv', got {self.stem!r}")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"norm: expected 'group' or 'batch', got {self.norm!r}")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must be non-empty and equally long")


@dataclass
class CNNLSTMConfig(CNNBackboneConfig):
    lstm_layers: int = 2

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 16, "widths": (8, 16), "blocks": (1, 1), "stem": "conv", "dim": 32, "lstm_layers": 1},
        "quick": {"widths": (32, 64, 128, 256), "blocks": (1, 1, 1, 1), "dim": 256, "lstm_layers": 2},
        # ResNet-50 + 4-layer LSTM (App. A.4)
        "paper": {"block": "bottleneck", "widths": (64, 128, 256, 512), "blocks": (3, 4, 6, 3), "dim": 512,
                  "lstm_layers": 4},
    }


@dataclass
class CNNTransformerConfig(CNNBackboneConfig):
    layers: int = 4
    heads: int = 4
    max_frames: int = 16        # longest window (learned positional embeddings)
    dropout: float = 0.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image_size": 16, "widths": (8, 16), "blocks": (1, 1), "stem": "conv", "dim": 32, "layers": 1,
                 "heads": 2},
        "quick": {"widths": (32, 64, 128, 256), "blocks": (1, 1, 1, 1), "dim": 256, "layers": 4, "heads": 4},
        # ResNet-50 + 12-layer causal transformer (App. A.4)
        "paper": {"block": "bottleneck", "widths": (64, 128, 256, 512), "blocks": (3, 4, 6, 3), "dim": 512,
                  "layers": 12, "heads": 8},
    }


def _norm_layer(kind: str):
    if kind == "batch":
        return nn.BatchNorm2d
    return lambda c: group_norm(c, max_groups=32, eps=1e-5)


class ResNetEncoder(nn.Module):
    """frames ``[N, 3, H, W]`` in [0, 1] -> pooled features ``[N, dim]``.

    torchvision residual blocks with configurable widths / depths: ``block="bottleneck", widths=(64, 128, 256,
    512), blocks=(3, 4, 6, 3)`` with the ``imagenet`` stem is exactly the ResNet-50 trunk (randomly initialised).
    """

    def __init__(self, config: CNNBackboneConfig):
        super().__init__()
        config.validate()
        block = BasicBlock if config.block == "basic" else Bottleneck
        norm = _norm_layer(config.norm)
        w0 = config.widths[0]
        if config.stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 7, stride=2, padding=3, bias=False), norm(w0), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, padding=1, bias=False), norm(w0), nn.ReLU(inplace=True))
        stages, in_ch = [], w0
        for i, (width, n) in enumerate(zip(config.widths, config.blocks)):
            stride = 1 if i == 0 else 2
            for j in range(n):
                out_ch = width * block.expansion
                down = None
                if j == 0 and (stride != 1 or in_ch != out_ch):
                    down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))
                stages.append(block(in_ch, width, stride if j == 0 else 1, down, norm_layer=norm))
                in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(in_ch, config.dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last norm of each residual branch: every block starts as the identity (torchvision option)
        for m in self.stages:
            last = m.bn3 if isinstance(m, Bottleneck) else m.bn2
            nn.init.zeros_(last.weight)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(self.stem(x * 2 - 1))  # [N, C, h, w]
        return self.proj(h.mean(dim=(2, 3)))  # global average pool -> [N, dim]


class _CNNSequence(nn.Module):
    """Shared plumbing: per-frame ResNet features ``[B, T, D]`` for a sequence model on top."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = CNNBackboneConfig

    def __init__(self, config: CNNBackboneConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.encoder = ResNetEncoder(config)

    @property
    def feature_dim(self) -> int:
        return int(self.config.dim)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def frame_features(self, frames: Tensor) -> Tensor:
        frames = check_frames(frames, name="frames", image_size=self.image_size, check_range=False)
        b, t = frames.shape[:2]
        return self.encoder(frames.flatten(0, 1)).view(b, t, -1)  # [B, T, D]

    def frame_codes(self, frames: Tensor) -> Tensor:
        """The per-frame part of `features` (the ResNet features ``[B, T, D]``), for a policy's frame cache."""
        return self.frame_features(frames)

    def _per_frame(self, frames: Tensor, frame_codes: Tensor | None) -> Tensor:
        if frame_codes is None:
            return self.frame_features(frames)
        if tuple(frame_codes.shape) != (*frames.shape[:2], self.feature_dim):
            raise ValueError(f"frame_codes: expected [B, T, {self.feature_dim}] for frames {list(frames.shape)}, "
                             f"got {list(frame_codes.shape)}")
        return frame_codes


class CNNLSTM(_CNNSequence):
    """ResNet per frame + LSTM over time. ``features(frames [B, T, 3, H, W]) -> [B, T, D]``: the top LSTM layer's
    output at step t (it has seen frames 0..t only)."""

    kind = "cnn_lstm"
    config_class = CNNLSTMConfig

    def __init__(self, config: CNNLSTMConfig):
        super().__init__(config)
        self.lstm = nn.LSTM(config.dim, config.dim, num_layers=config.lstm_layers, batch_first=True)

    def features(self, frames: Tensor, actions: Tensor | None = None, *,
                 frame_codes: Tensor | None = None) -> Tensor:
        x = self._per_frame(frames, frame_codes)  # [B, T, D]
        h, _ = self.lstm(x)  # [B, T, D]
        return h


class CNNTransformer(_CNNSequence):
    """ResNet per frame + learned time embedding + causal transformer (SDPA, ``is_causal``).
    ``features(frames [B, T, 3, H, W]) -> [B, T, D]``: the final hidden state of frame t's token, which attends
    to frames 0..t only. T <= ``max_frames``."""

    kind = "cnn_transformer"
    config_class = CNNTransformerConfig

    def __init__(self, config: CNNTransformerConfig):
        super().__init__(config)
        self.time_embed = nn.Parameter(torch.randn(1, config.max_frames, config.dim) * 0.02)
        self.transformer = CausalTransformer(dim=config.dim, layers=config.layers, heads=config.heads,
                                             dropout=config.dropout)

    def features(self, frames: Tensor, actions: Tensor | None = None, *,
                 frame_codes: Tensor | None = None) -> Tensor:
        t = frames.shape[1] if frames.ndim == 5 else 0
        if t > self.config.max_frames:
            raise ValueError(f"frames: at most max_frames={self.config.max_frames} frames, got {list(frames.shape)}")
        x = self._per_frame(frames, frame_codes) + self.time_embed[:, :t]  # [B, T, D]
        return self.transformer(x)  # causal self-attention -> [B, T, D]


BACKBONES: dict[str, type[_CNNSequence]] = {"cnn_lstm": CNNLSTM, "cnn_transformer": CNNTransformer}


def make_backbone(kind: str, preset_name: str = "quick", **overrides: Any) -> _CNNSequence:
    """A CNN backbone from a preset (``tiny`` / ``quick`` / ``paper``) with field overrides."""
    if kind not in BACKBONES:
        raise ValueError(f"unknown CNN backbone {kind!r}; known: {sorted(BACKBONES)}")
    cls = BACKBONES[kind]
    config = preset(cls.config_class, preset_name)
    if overrides:
        from foresight.config import merge

        config = merge(config, overrides)
    return cls(config)


def backbone_spec(backbone: nn.Module) -> dict[str, Any]:
    """JSON description of a backbone, enough for `build_backbone` to rebuild it (weights excluded)."""
    if isinstance(backbone, WorldModel):
        return {"kind": "world_model", "type": backbone.type, "config": to_dict(backbone.config),
                "stage": backbone.stage}
    if isinstance(backbone, _CNNSequence):
        return {"kind": backbone.kind, "config": to_dict(backbone.config)}
    raise ValueError(f"cannot describe a {type(backbone).__name__} backbone in a checkpoint: use a foresight "
                     f"WorldModel or one of {sorted(BACKBONES)}")


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a (randomly initialised) backbone from `backbone_spec`'s dict."""
    kind = spec.get("kind")
    if kind == "world_model":
        cls = get_model_class(spec["type"])
        model = cls(from_dict(cls.config_class, spec["config"]))
        if spec.get("stage") in model.stages:
            model.stage = spec["stage"]
        return model
    if kind in BACKBONES:
        cls = BACKBONES[kind]
        return cls(from_dict(cls.config_class, spec["config"]))
    raise ValueError(f"unknown backbone kind {kind!r}; known: ['world_model', {', '.join(map(repr, sorted(BACKBONES)))}]")


@torch.no_grad()
def reinit_stage(model: WorldModel, stage: str, *, seed: int = 0) -> WorldModel:
    """Re-initialise the parameters of one training stage of ``model`` in place (e.g. HARP's transformer for the
    VQ-Transformer baseline: same architecture and frozen tokenizer, transformer trained from scratch).

    Rather than calling ``reset_parameters`` module by module (which misses models' own init schemes: GPT-2
    style residual scaling, custom embeddings), a fresh model is built from the same config under ``seed`` and
    the stage's parameters, plus the buffers of modules that belong wholly to the stage, are copied from it.
    Everything outside the stage (e.g. the pretrained tokenizer and its codebook) is untouched.
    """
    if stage not in model.stages:
        raise ValueError(f"unknown stage {stage!r} for {type(model).__name__}; stages: {list(model.stages)}")
    stage_ids = {id(p) for p in model.stage_parameters(stage)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    fresh_params = dict(fresh.named_parameters())
    for name, p in model.named_parameters():
        if id(p) in stage_ids:
            p.copy_(fresh_params[name])
    fresh_modules = dict(fresh.named_modules())
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and all(id(p) in stage_ids for p in own):
            for bname, buf in module.named_buffers(recurse=False):
                buf.copy_(getattr(fresh_modules[name], bname))
    return model
