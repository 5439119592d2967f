"""Config of the hierarchical Video VQ-VAE: a two-level clip VQ-VAE and two PixelCNN priors over its codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["VideoVQVAEConfig"]


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass
class VideoVQVAEConfig:
    """All sizes of a Video VQ-VAE world model.

    A clip of ``C + F`` frames becomes a BOTTOM latent of ``(C + F) / time_downsample`` steps of
    ``(image_size / space_downsample)**2`` codes and a coarser TOP latent, ``top_time_downsample`` and
    ``top_space_downsample`` times smaller again (the seed: 256x256x16 -> bottom 64x64x8, top 32x32x4). One top
    step covers ``time_downsample * top_time_downsample`` frames, which must divide ``context_frames`` and
    ``future_frames`` so that no latent step mixes context and future frames.
    """

    image_size: int = 256                # square frames, H = W
    action_dim: int = 4                  # 0 = action-free
    context_frames: int = 4              # C: frames the prediction is conditioned on (seed: 4)
    future_frames: int = 12              # F: frames the priors are trained to predict (seed: 12)
    # --- stage "vqvae": the two-level VQ-VAE over clips
    time_downsample: int = 2             # frames per bottom latent step (power of two)
    space_downsample: int = 4            # pixels per bottom latent cell side (power of two, >= 2)
    top_time_downsample: int = 2         # bottom steps per top step (power of two)
    top_space_downsample: int = 2        # bottom cells per top cell side (power of two, >= 2)
    hidden: int = 128                    # channels of the 3D conv stacks (seed: 128 hidden units)
    res_channels: int = 32               # bottleneck channels of a residual block (seed: 32 residual units)
    res_layers: int = 2                  # residual blocks per encoder / decoder stack (seed: 2)
    codebook_size: int = 512             # K codes, one codebook per level (seed: 512)
    code_dim: int = 64                   # E: width of a code vector (seed: 64)
    beta: float = 0.25                   # commitment weight (on the encoder's term; seed: 0.25)
    ema_decay: float = 0.99              # EMA codebook decay
    dead_code_threshold: float = 1.0     # restart codes whose EMA count drops below this
    bottom_mask_prob: float = 0.1        # chance per clip of zeroing the bottom latent at the decoder input (training)
    # --- stage "top_prior": 3D PixelCNN over the top latent cube
    top_width: int = 512                 # D: channels of the residual stream (gated convs have 2 D; seed 512 / 1024)
    top_layers: int = 40                 # gated masked-conv blocks (seed: 40)
    top_attention_every: int = 5         # a causal self-attention block after every k gated blocks (seed: 5)
    top_heads: int = 8                   # attention heads (seed: 8)
    top_kernel: int = 3                  # spatial size of the masked kernels (seed: 3)
    top_time_kernel: int = 3             # temporal size of the masked kernels (current slice + k-1 past slices)
    top_dropout: float = 0.5             # dropout on the residual branches (seed: 0.5)
    top_cond_width: int = 512            # channels of the context conditioning stack (seed: 512)
    top_cond_blocks: int = 4             # residual blocks of the context conditioning stack (seed: 4)
    # --- stage "bottom_prior": 2D PixelCNN over one bottom time slice, conditioned on top latents
    bottom_width: int = 512              # D of the bottom prior (seed: 512)
    bottom_layers: int = 20              # gated masked-conv blocks (seed: 20)
    bottom_attention_every: int = 5      # a causal self-attention block after every k gated blocks (seed: 5)
    bottom_heads: int = 8                # attention heads (seed: 8)
    bottom_kernel: int = 5               # size of the masked kernels (seed: 5)
    bottom_dropout: float = 0.0          # dropout on the residual branches (seed: 0.0)
    bottom_cond_width: int = 512         # channels of the conditioning stack (seed's Table 8: 1024)
    bottom_cond_blocks: int = 20         # residual blocks of the conditioning stack (seed: 20)
    bottom_top_window: int = 4           # top steps the conditioning stack reads (the slice's own and earlier ones)
    bottom_bottom_window: int = 2        # past bottom slices the conditioning stack reads (seed: 2)
    bottom_slices_per_clip: int = 0      # future bottom slices per clip and training step (0 = all of them)
    # --- sampling
    top_k: int = 0                       # sample among the k most likely codes (0 = full distribution, the seed)
    temperature: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Tests: 16x16 frames, 2 + 4 frames -> bottom 6 x 4 x 4, top 3 x 2 x 2 codes; seconds on a CPU.
        "tiny": {
            "image_size": 16, "context_frames": 2, "future_frames": 4, "time_downsample": 1, "space_downsample": 4,
            "hidden": 16, "res_channels": 8, "res_layers": 1, "codebook_size": 32, "code_dim": 8,
            "bottom_mask_prob": 0.1,
            "top_width": 16, "top_layers": 2, "top_attention_every": 2, "top_heads": 2, "top_kernel": 3,
            "top_time_kernel": 2, "top_dropout": 0.0, "top_cond_width": 16, "top_cond_blocks": 1,
            "bottom_width": 16, "bottom_layers": 2, "bottom_attention_every": 2, "bottom_heads": 2,
            "bottom_kernel": 3, "bottom_dropout": 0.0, "bottom_cond_width": 16, "bottom_cond_blocks": 1,
            "bottom_top_window": 2, "bottom_bottom_window": 2,
        },
        # CPU-sized: 64x64 frames, 2 + 10 frames -> bottom 12 x 8 x 8, top 6 x 4 x 4 codes.
        "quick": {
            "image_size": 64, "context_frames": 2, "future_frames": 10, "time_downsample": 1, "space_downsample": 8,
            "hidden": 32, "res_channels": 16, "res_layers": 2, "codebook_size": 256, "code_dim": 32,
            "top_width": 64, "top_layers": 6, "top_attention_every": 3, "top_heads": 4, "top_kernel": 3,
            "top_time_kernel": 3, "top_dropout": 0.1, "top_cond_width": 64, "top_cond_blocks": 2,
            "bottom_width": 64, "bottom_layers": 6, "bottom_attention_every": 3, "bottom_heads": 4,
            "bottom_kernel": 3, "bottom_dropout": 0.0, "bottom_cond_width": 64, "bottom_cond_blocks": 2,
            "bottom_top_window": 2, "bottom_bottom_window": 2,
        },
        # The seed's sizes (Sec. 3, App. Tables 3-8): 256x256, 4 + 12 frames -> bottom 8 x 64 x 64, top 4 x 32 x 32,
        # 512 codes of width 64 per level; a 40-layer top prior (8 attention layers, dropout 0.5) and a 20-layer
        # bottom prior (kernel 5, 4 attention layers). For a GPU.
        "paper": {"bottom_slices_per_clip": 1},
    }

    # ------------------------------------------------------------------ derived sizes
    @property
    def frames_per_top_step(self) -> int:
        return self.time_downsample * self.top_time_downsample

    @property
    def bottom_grid(self) -> int:
        """Codes per side of one bottom time slice."""
        return self.image_size // self.space_downsample

    @property
    def top_grid(self) -> int:
        """Codes per side of one top time slice."""
        return self.bottom_grid // self.top_space_downsample

    @property
    def context_bottom_steps(self) -> int:
        return self.context_frames // self.time_downsample

    @property
    def context_top_steps(self) -> int:
        return self.context_frames // self.frames_per_top_step

    @property
    def future_bottom_steps(self) -> int:
        return self.future_frames // self.time_downsample

    @property
    def future_top_steps(self) -> int:
        return self.future_frames // self.frames_per_top_step

    @property
    def top_window(self) -> int:
        """Top steps the top prior models at once: the context steps and the trained future steps."""
        return self.context_top_steps + self.future_top_steps

    def validate(self) -> None:
        for name in ("time_downsample", "space_downsample", "top_time_downsample", "top_space_downsample"):
            if not _power_of_two(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two, got {getattr(self, name)}")
        if self.space_downsample < 2 or self.top_space_downsample < 2:
            raise ValueError(f"space_downsample and top_space_downsample must be >= 2 (each level is coarser in "
                             f"space), got {self.space_downsample}, {self.top_space_downsample}")
        factor = self.space_downsample * self.top_space_downsample
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by space_downsample * "
                             f"top_space_downsample = {factor}")
        if self.context_frames < 1 or self.future_frames < 1:
            raise ValueError(f"need context_frames >= 1 and future_frames >= 1, got {self.context_frames}, "
                             f"{self.future_frames}")
        step = self.frames_per_top_step
        if self.context_frames % step or self.future_frames % step:
            raise ValueError(
                f"time_downsample * top_time_downsample = {step} frames per top step must divide context_frames "
                f"{self.context_frames} and future_frames {self.future_frames}: a latent step may not mix context "
                f"and future frames")
        for prefix in ("top", "bottom"):
            width, heads = getattr(self, f"{prefix}_width"), getattr(self, f"{prefix}_heads")
            if width % heads:
                raise ValueError(f"{prefix}_width {width} must be divisible by {prefix}_heads {heads}")
            kernel = getattr(self, f"{prefix}_kernel")
            if kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"{prefix}_kernel must be odd, got {kernel}")
            if getattr(self, f"{prefix}_layers") < 1 or getattr(self, f"{prefix}_attention_every") < 0:
                raise ValueError(f"need {prefix}_layers >= 1 and {prefix}_attention_every >= 0 (0: no attention)")
        if self.top_time_kernel < 1:
            raise ValueError(f"top_time_kernel must be >= 1, got {self.top_time_kernel}")
        if self.bottom_top_window < 1 or self.bottom_bottom_window < 0:
            raise ValueError(f"need bottom_top_window >= 1 and bottom_bottom_window >= 0, got "
                             f"{self.bottom_top_window}, {self.bottom_bottom_window}")
        if not 0.0 <= self.bottom_mask_prob < 1.0:
            raise ValueError(f"bottom_mask_prob must be in [0, 1), got {self.bottom_mask_prob}")
        if self.bottom_slices_per_clip < 0:
            raise ValueError(f"bottom_slices_per_clip must be >= 0, got {self.bottom_slices_per_clip}")
        if self.top_k < 0 or self.temperature <= 0:
            raise ValueError(f"need top_k >= 0 and temperature > 0, got {self.top_k}, {self.temperature}")
