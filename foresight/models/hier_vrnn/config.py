"""Hier-VRNN config and the shape rules of its frame pyramid.

Every spatial size the model works at comes from one pyramid of frame features: the frame encoder halves H, W
from ``image_size`` while the result stays ``>= min_size``, then adds a 1x1 top level. Latent levels
(``latent_sizes``) and decoder ConvLSTMs (``decoder_sizes``) must sit on sizes of that pyramid, because each one
reads the frame feature of its own size (paper Sec. 4.2: "the feature map of a frame with the same spatial
resolution as the ConvLSTM").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from foresight.config import ConfigError

__all__ = ["HierVRNNConfig", "pyramid_sizes", "feature_channels"]


@dataclass
class HierVRNNConfig:
    """Hierarchical VRNN (Castrejon, Ballas and Courville, 2019), action-conditioned.

    Widths: the frame feature at size ``image_size / 2**i`` has ``min(base_channels * 2**i, max_channels)``
    channels and the 1x1 top feature ``top_channels``; every ConvLSTM (prior, posterior, decoder) at size r has
    ``min(feature_channels(r), lstm_channels)`` hidden channels.

    Training defaults of the paper that live in the Trainer, not here (``TrainConfig`` presets are shared by all
    models): Adam(W) betas (0.5, 0.9), weight decay 1e-4, learning rate warmed up linearly to 1.6e-4. Pass them
    on the command line (docs/hier_vrnn.md): ``train.lr=1.6e-4 train.betas=[0.5,0.9] train.weight_decay=1e-4
    train.warmup_steps=N train.min_lr_ratio=1.0``.
    """

    image_size: int = 64
    action_dim: int = 4                          # 0 = action-free
    context_frames: int = 2                      # C: frames that set the initial recurrent states
    future_frames: int = 10                      # F: frames trained to predict (paper, BAIR: 2 + 10)
    base_channels: int = 32                      # frame-feature channels at full resolution
    max_channels: int = 256                      # cap of the doubling per halving
    top_channels: int = 256                      # channels of the 1x1 top frame feature (features / embed)
    min_size: int = 4                            # the encoder stops halving here (then the 1x1 top level)
    res_blocks: int = 1                          # residual blocks per encoder level (after each max-pool)
    latent_sizes: tuple[int, ...] = (1, 8, 32)   # spatial size of each latent level, top (coarsest) first
    latent_channels: tuple[int, ...] = (32, 16, 8)  # channels of z at each level (same order)
    decoder_sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64)  # sizes of the decoder's ConvLSTMs, coarsest first
    lstm_channels: int = 128                     # cap on the hidden channels of every ConvLSTM
    kl_weight: float = 1.0                       # beta after warm-up, on KL in nats per frame / (3 H W)
    kl_warmup_steps: int = 10000                 # training loss calls over which beta rises linearly from 0
    residual: bool = True                        # predict x_t as x_{t-1} + decoder output (else sigmoid)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Tests: 16x16, 2 + 3 frames, two latent levels (1x1, 4x4); CPU seconds.
        "tiny": {"image_size": 16, "context_frames": 2, "future_frames": 3, "base_channels": 8, "max_channels": 16,
                 "top_channels": 16, "min_size": 4, "latent_sizes": (1, 4), "latent_channels": (4, 2),
                 "decoder_sizes": (1, 4, 8, 16), "lstm_channels": 16, "kl_warmup_steps": 100},
        # CPU-sized 64x64, 2 + 10: three latent levels 1-8-16 (the seed's 1-8-32 costs twice the CPU time) and
        # narrow layers; the decoder's ConvLSTMs stop at 16x16 and transposed convs with a skip of the previous
        # frame reach 64x64 (as in the seed's smaller-likelihood ablations, Table 1).
        "quick": {"image_size": 64, "context_frames": 2, "future_frames": 10, "base_channels": 8,
                  "max_channels": 64, "top_channels": 64, "latent_sizes": (1, 8, 16), "latent_channels": (16, 8, 4),
                  "decoder_sizes": (1, 4, 8, 16), "lstm_channels": 32, "kl_warmup_steps": 1000},
        # The seed's BAIR setup: 64x64, 2 + 10, latents 1-8-32, six decoder ConvLSTMs 1-4-8-16-32-64 (Tables 1-2).
        # Channel widths are not in the seed's main text; these are chosen for a GPU, not copied.
        "paper": {"image_size": 64, "context_frames": 2, "future_frames": 10, "base_channels": 64,
                  "max_channels": 512, "top_channels": 512, "latent_sizes": (1, 8, 32),
                  "latent_channels": (64, 32, 16), "decoder_sizes": (1, 4, 8, 16, 32, 64), "lstm_channels": 256,
                  "kl_warmup_steps": 20000},
    }

    def __post_init__(self):
        if self.context_frames < 1 or self.future_frames < 1:
            raise ConfigError(f"need context_frames >= 1 and future_frames >= 1, got "
                              f"{self.context_frames}, {self.future_frames}")
        if self.action_dim < 0:
            raise ConfigError(f"action_dim must be >= 0 (0 = action-free), got {self.action_dim}")
        if self.min_size < 2 or self.image_size < self.min_size:
            raise ConfigError(f"need 2 <= min_size <= image_size, got min_size={self.min_size}, "
                              f"image_size={self.image_size}")
        for name in ("base_channels", "max_channels", "top_channels", "res_blocks", "lstm_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        sizes = pyramid_sizes(self)
        if not self.latent_sizes or len(self.latent_sizes) != len(self.latent_channels):
            raise ConfigError(f"latent_sizes {list(self.latent_sizes)} and latent_channels "
                              f"{list(self.latent_channels)} must be non-empty and of the same length")
        for name in ("latent_sizes", "decoder_sizes"):
            values = list(getattr(self, name))
            if not values or values != sorted(set(values)):
                raise ConfigError(f"{name} must be strictly increasing (coarsest first), got {values}")
            if not set(values) <= set(sizes):
                raise ConfigError(f"{name} {values} must be sizes of the frame pyramid {sorted(sizes)} "
                                  f"(image_size={self.image_size}, min_size={self.min_size})")
        if any(c < 1 for c in self.latent_channels):
            raise ConfigError(f"latent_channels must be >= 1, got {list(self.latent_channels)}")
        if self.kl_weight < 0 or self.kl_warmup_steps < 0:
            raise ConfigError(f"need kl_weight >= 0 and kl_warmup_steps >= 0, got {self.kl_weight}, "
                              f"{self.kl_warmup_steps}")


def pyramid_sizes(config: HierVRNNConfig) -> list[int]:
    """Sizes of the frame features, finest first: ``[image_size, image_size / 2, ..., >= min_size, 1]``."""
    sizes = [config.image_size]
    while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= config.min_size:
        sizes.append(sizes[-1] // 2)
    return sizes + [1]


def feature_channels(config: HierVRNNConfig, size: int) -> int:
    """Channels of the frame feature at ``size`` (a pyramid size)."""
    if size == 1:
        return config.top_channels
    level = pyramid_sizes(config).index(size)
    return min(config.base_channels * 2**level, config.max_channels)
