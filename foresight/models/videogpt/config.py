"""Config of VideoGPT: a VQ-VAE over clips (3D convs + axial attention) and a GPT prior over its latent grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["VideoGPTConfig"]


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass
class VideoGPTConfig:
    """All sizes of a VideoGPT world model.

    A clip of ``C + F`` frames becomes a latent grid of ``(C + F) / time_downsample`` steps of
    ``(image_size / space_downsample)**2`` codes each. ``time_downsample`` must divide ``context_frames`` and
    ``future_frames``, so that every latent step covers either context frames only or future frames only.
    """

    image_size: int = 64                 # square frames, H = W
    action_dim: int = 4                  # 0 = action-free
    context_frames: int = 2              # C: frames the prediction is conditioned on
    future_frames: int = 14              # F: frames the prior is trained to predict (seed: 16-frame clips)
    # --- stage 1: VQ-VAE over clips
    time_downsample: int = 2             # frames per latent step (power of two)
    space_downsample: int = 2            # pixels per latent cell side (power of two)
    hidden: int = 240                    # channels of the conv stacks and the attention residual blocks
    res_channels: int = 128              # bottleneck channels inside an attention residual block
    res_layers: int = 4                  # attention residual blocks in the encoder and in the decoder
    axial_attention: bool = True         # axial attention (T causal, H, W) in every residual block
    vq_heads: int = 2                    # heads of each axial attention
    codebook_size: int = 1024            # K codes
    code_dim: int = 256                  # E: width of a code vector
    beta: float = 0.25                   # commitment weight (on the encoder's term)
    ema_decay: float = 0.99              # EMA codebook decay
    dead_code_threshold: float = 1.0     # restart codes whose EMA count drops below this
    # --- stage 2: GPT prior
    width: int = 512                     # D: token embedding / transformer width
    layers: int = 16                     # transformer blocks
    heads: int = 4                       # attention heads (self and cross)
    mlp_ratio: int = 4                   # MLP hidden width = mlp_ratio * width
    dropout: float = 0.2                 # dropout after the attention and MLP branches (the seed's regulariser)
    attn_dropout: float = 0.0            # dropout on attention probabilities (0 keeps CPU attention fused)
    cond_widths: tuple[int, ...] = (64, 128, 256, 512)  # conditioning ResNet stage widths
    cond_blocks: tuple[int, ...] = (3, 4, 6, 3)         # basic blocks per stage (ResNet-34 layout, seed's BAIR)
    cond_downsample: int = 4             # the conditioning feature map is image_size / cond_downsample per side
    # --- sampling
    top_k: int = 0                       # sample among the k most likely codes (0 = full distribution, the seed)
    temperature: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Tests: 16x16 frames, 2 + 4 frames -> 3 latent steps of 4x4 codes (48 tokens), seconds on a CPU.
        "tiny": {
            "image_size": 16, "context_frames": 2, "future_frames": 4, "time_downsample": 2, "space_downsample": 4,
            "hidden": 16, "res_channels": 8, "res_layers": 1, "vq_heads": 2, "codebook_size": 32, "code_dim": 8,
            "width": 32, "layers": 2, "heads": 2, "dropout": 0.0, "cond_widths": (8, 16), "cond_blocks": (1, 1),
            "cond_downsample": 4,
        },
        # CPU-sized: 64x64 frames, 2 + 10 frames -> 6 latent steps of 8x8 codes (384 tokens).
        "quick": {
            "image_size": 64, "context_frames": 2, "future_frames": 10, "time_downsample": 2, "space_downsample": 8,
            "hidden": 32, "res_channels": 32, "res_layers": 2, "vq_heads": 2, "codebook_size": 256, "code_dim": 32,
            "width": 96, "layers": 4, "heads": 4, "dropout": 0.1, "cond_widths": (16, 32, 64),
            "cond_blocks": (1, 1, 1), "cond_downsample": 8,
        },
        # The seed's BAIR / RoboNet sizes (App. A, Tables 8-9): 16 frames of 64x64 -> 8x32x32 latents, 1024 codes
        # of width 256, 4 attention residual blocks of 240 / 128 channels; a 16-layer, width-512, 4-head prior
        # with FF 2048, dropout 0.2 and a ResNet-34 conditioning encoder. For a GPU.
        "paper": {},
    }

    @property
    def grid(self) -> int:
        """Codes per side of one latent step."""
        return self.image_size // self.space_downsample

    @property
    def context_steps(self) -> int:
        """Latent steps covering the context frames."""
        return self.context_frames // self.time_downsample

    @property
    def future_steps(self) -> int:
        """Latent steps covering the trained future frames."""
        return self.future_frames // self.time_downsample

    @property
    def latent_steps(self) -> int:
        return self.context_steps + self.future_steps

    def validate(self) -> None:
        for name in ("time_downsample", "space_downsample", "cond_downsample"):
            if not _power_of_two(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two, got {getattr(self, name)}")
        if self.image_size % self.space_downsample or self.image_size % self.cond_downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by space_downsample "
                             f"{self.space_downsample} and cond_downsample {self.cond_downsample}")
        if self.context_frames < 1 or self.future_frames < 1:
            raise ValueError(f"need context_frames >= 1 and future_frames >= 1, got {self.context_frames}, "
                             f"{self.future_frames}")
        if self.context_frames % self.time_downsample or self.future_frames % self.time_downsample:
            raise ValueError(
                f"time_downsample {self.time_downsample} must divide context_frames {self.context_frames} and "
                f"future_frames {self.future_frames}: a latent step may not mix context and future frames")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.hidden % self.vq_heads:
            raise ValueError(f"hidden {self.hidden} must be divisible by vq_heads {self.vq_heads}")
        if len(self.cond_widths) != len(self.cond_blocks):
            raise ValueError(f"cond_widths {self.cond_widths} and cond_blocks {self.cond_blocks} differ in length")
        if 2 ** len(self.cond_widths) < self.cond_downsample:
            raise ValueError(f"cond_widths {self.cond_widths} allow at most {2 ** len(self.cond_widths)}x "
                             f"downsampling, cond_downsample is {self.cond_downsample}")
        if self.top_k < 0 or self.temperature <= 0:
            raise ValueError(f"need top_k >= 0 and temperature > 0, got {self.top_k}, {self.temperature}")
