"""GHVAE config and the per-module shape rules.

A module's shapes depend only on its index k (1-based) and the config's width rules, never on how many modules
the stack has: module k of a 3-module model and of a 6-module model are the same network, which is what lets a
trained stack grow by one module without touching the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["GHVAEConfig", "ModuleShape", "module_shapes"]


@dataclass
class GHVAEConfig:
    """Greedy Hierarchical VAE (Wu et al., 2021).

    Widths: module k has ``min(base_channels * 2**(k-1), max_channels)`` channels in h^k, a stochastic latent
    z^k of ``max(4, channels // latent_divisor)`` channels, and ConvLSTM prior/posterior of
    ``min(channels, max_lstm_channels)`` hidden channels. Each module halves H and W until ``min_size``.
    """

    image_size: int = 64
    action_dim: int = 4              # 0 = action-free
    context_frames: int = 2
    future_frames: int = 10
    num_modules: int = 6             # K
    base_channels: int = 32          # channels of h^1
    max_channels: int = 256
    latent_divisor: int = 4          # z^k channels = channels of h^k // latent_divisor
    max_lstm_channels: int = 128
    min_size: int = 4                # encoders stop halving H, W here
    res_blocks: int = 1              # residual blocks in each encoder and decoder
    posterior_std: float = 1.0       # the FIXED std of q(z | x) (paper: fixed for stability)
    kl_weight: float = 1e-3          # beta on KL per pixel (see GHVAE.loss)
    residual: bool = True            # predict x_{t+1} as x_t + decoder output
    finetune: bool = True            # append an end-to-end "finetune" stage after the greedy ones
    cache_dtype: str = "float16"     # dtype of cached frozen-module features ("float16" | "float32")
    checkpoint_frozen: bool = False  # recompute frozen decoders in backward instead of storing their activations
    action_in_decoder: bool = True  # a_t modulates every decoder's bottleneck (FiLM); False = prior-only (action-blind)
    latent_weight: float = 0.1       # weight of the next-feature head's loss (relative MSE; trains only that head)
    rollout_weight: float = 1.0      # weight of the open-loop latent rollout loss (relative MSE over the future)
    embedding: str = "deepest"       # what embed / predict_embeddings return: "deepest" (h^d) | "readout" (image)
    readout_size: int = 16           # R of the readout image 3 x R x R (the embedding when embedding="readout")
    readout_weight: float = 1.0      # weight of the readout losses (relative MSE, real and rolled-out h^d)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"embedding": "readout", "readout_size": 8, "image_size": 16, "num_modules": 2, "base_channels": 8, "max_channels": 16,
                 "max_lstm_channels": 16, "min_size": 4, "context_frames": 2, "future_frames": 3},
        "quick": {"embedding": "readout", "image_size": 64, "num_modules": 4, "base_channels": 16, "max_channels": 128,
                  "max_lstm_channels": 64, "min_size": 4},
        "paper": {"embedding": "readout", "image_size": 64, "num_modules": 6, "base_channels": 64, "max_channels": 512,
                  "max_lstm_channels": 256, "min_size": 2},
    }

    def __post_init__(self):
        if self.num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {self.num_modules}")
        if self.context_frames < 1 or self.future_frames < 1:
            raise ValueError(f"need context_frames >= 1 and future_frames >= 1, got "
                             f"{self.context_frames}, {self.future_frames}")
        if self.cache_dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(f"cache_dtype must be float16, bfloat16 or float32, got {self.cache_dtype!r}")
        if self.latent_weight < 0:
            raise ValueError(f"latent_weight must be >= 0, got {self.latent_weight}")
        if self.embedding not in ("deepest", "readout"):
            raise ValueError(f"embedding must be 'deepest' or 'readout', got {self.embedding!r}")
        if self.readout_size < 1 or self.readout_weight < 0:
            raise ValueError(f"need readout_size >= 1 and readout_weight >= 0, got {self.readout_size}, "
                             f"{self.readout_weight}")
        if self.rollout_weight < 0:
            raise ValueError(f"rollout_weight must be >= 0, got {self.rollout_weight}")
        if self.posterior_std <= 0:
            raise ValueError(f"posterior_std must be > 0, got {self.posterior_std}")


@dataclass(frozen=True)
class ModuleShape:
    """Shapes of module k: its input (h^{k-1}, or x for k=1) and output h^k, latent z^k, what its decoder emits."""

    index: int          # k, 1-based
    in_channels: int    # channels of h^{k-1} (3 for k=1)
    channels: int       # channels of h^k
    size: int           # H^k = W^k
    downsample: bool    # whether the encoder halves H, W
    latent: int         # channels of z^k
    lstm: int           # hidden channels of the prior/posterior ConvLSTMs
    out_channels: int   # decoder output: 3 (pixels) for k=1, else channels of z^{k-1}


def module_shapes(config: GHVAEConfig, num_modules: int | None = None) -> list[ModuleShape]:
    """Shapes of modules 1..num_modules (default: config.num_modules)."""
    shapes: list[ModuleShape] = []
    size, in_ch, prev_latent = config.image_size, 3, 3
    for k in range(1, (num_modules or config.num_modules) + 1):
        ch = min(config.base_channels * 2 ** (k - 1), config.max_channels)
        down = size // 2 >= config.min_size and size % 2 == 0
        size = size // 2 if down else size
        latent = max(4, ch // config.latent_divisor)
        shapes.append(ModuleShape(index=k, in_channels=in_ch, channels=ch, size=size, downsample=down,
                                  latent=latent, lstm=min(ch, config.max_lstm_channels), out_channels=prev_latent))
        in_ch, prev_latent = ch, latent
    return shapes
