"""Config of HARP: VQ-GAN tokenizer + causal transformer over frame codes, with action embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class HarpConfig:
    """All sizes of a HARP world model. One code grid per frame: ``image_size / 2**(len(channel_mult)-1)``."""

    image_size: int = 64                 # square frames, H = W
    action_dim: int = 4                  # 0 = action-free
    context_frames: int = 2              # C: frames the prediction is conditioned on
    future_frames: int = 10              # F: frames the transformer is trained to predict
    # --- stage 1: VQ-GAN tokenizer
    channels: int = 64                   # width of the first encoder level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; len-1 stride-2 downsamplings
    res_blocks: int = 2                  # residual blocks per level
    codebook_size: int = 1024            # K codes
    code_dim: int = 64                   # E: width of a code vector
    beta: float = 0.25                   # commitment weight (on the encoder's term)
    ema_decay: float = 0.99              # EMA codebook decay
    dead_code_threshold: float = 1.0     # restart codes whose EMA count drops below this
    l1_weight: float = 1.0               # pixel L1 reconstruction weight
    l2_weight: float = 0.0               # pixel L2 reconstruction weight
    perceptual_weight: float = 1.0       # LPIPS weight; 0 disables (no LPIPS weights needed)
    lpips_net: str = "alex"              # LPIPS backbone
    disc_weight: float = 0.8             # GAN weight on top of the adaptive weight; 0 = no discriminator
    disc_start: int = 10000              # tokenizer training step at which the GAN term switches on
    disc_channels: int = 64              # PatchGAN width
    disc_layers: int = 3                 # PatchGAN stride-2 layers
    tokenizer_frames_per_clip: int = 0   # frames drawn per clip for stage 1 (0 = all frames of the clip)
    # --- stage 2: causal transformer
    width: int = 256                     # D: token embedding / transformer width
    layers: int = 8                      # transformer blocks
    heads: int = 8                       # attention heads
    dropout: float = 0.1                 # dropout on the residual branches (attention output, MLP)
    attn_dropout: float = 0.1            # dropout on attention probabilities (0 keeps CPU attention fused)
    context_resnet: bool = True          # add a ResNet feature map of the context frames to their code embeddings
    resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
    resnet_blocks: tuple[int, ...] = (2, 2, 2, 2)
    # --- sampling
    top_k: int = 10                      # HARP: k = 10 on all datasets (0 = full distribution)
    temperature: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # A laptop-sized model for tests: 16x16 frames -> 4x4 codes, no LPIPS weights needed.
        "tiny": {
            "image_size": 16, "context_frames": 1, "future_frames": 3, "channels": 16, "channel_mult": (1, 2, 2),
            "res_blocks": 1, "codebook_size": 32, "code_dim": 8, "perceptual_weight": 0.0, "l2_weight": 1.0,
            "disc_start": 4, "disc_channels": 8, "disc_layers": 2, "width": 32, "layers": 2, "heads": 2,
            "dropout": 0.0, "resnet_widths": (8, 16), "resnet_blocks": (1, 1),
        },
        # Trains on a 2-core CPU in tens of minutes: 64x64 frames -> 8x8 codes, 2 + 10 frames.
        "quick": {
            "image_size": 64, "context_frames": 2, "future_frames": 10, "channels": 16, "channel_mult": (1, 2, 2, 4),
            "res_blocks": 1, "codebook_size": 256, "code_dim": 32, "perceptual_weight": 1.0, "disc_start": 3000,
            "disc_channels": 32, "disc_layers": 3, "tokenizer_frames_per_clip": 2, "width": 96, "layers": 3,
            "heads": 4, "dropout": 0.1, "attn_dropout": 0.0, "resnet_widths": (16, 32, 32), "resnet_blocks": (1, 1, 1),
        },
        # The paper's scale at 64x64: 16x16 codes per frame, 8192 codes, 12-layer transformer, ResNet-18 context.
        "paper": {
            "image_size": 64, "context_frames": 2, "future_frames": 10, "channels": 128, "channel_mult": (1, 1, 2),
            "res_blocks": 2, "codebook_size": 8192, "code_dim": 256, "perceptual_weight": 1.0, "disc_start": 30000,
            "width": 512, "layers": 12, "heads": 8, "dropout": 0.1,
            "resnet_widths": (64, 128, 256, 512), "resnet_blocks": (2, 2, 2, 2),
        },
    }

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        """Codes per side of a frame's code grid."""
        return self.image_size // self.downsample

    def validate(self) -> None:
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not divisible by the tokenizer's downsampling "
                             f"{self.downsample} (channel_mult={self.channel_mult})")
        if self.context_frames < 1 or self.future_frames < 1:
            raise ValueError(f"need context_frames >= 1 and future_frames >= 1, got {self.context_frames}, "
                             f"{self.future_frames}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.context_resnet and 2 ** len(self.resnet_widths) < self.downsample:
            raise ValueError(f"resnet_widths {self.resnet_widths} allow at most {2 ** len(self.resnet_widths)}x "
                             f"downsampling, the code grid needs {self.downsample}x")
