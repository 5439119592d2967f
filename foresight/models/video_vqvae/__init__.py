"""Video VQ-VAE: a hierarchical (top + bottom) clip VQ-VAE with a spatio-temporal PixelCNN prior over the top
latents and a per-slice PixelCNN over the bottom latents, action-conditioned (registered as ``"video_vqvae"``)."""

from foresight.models.video_vqvae.config import VideoVQVAEConfig
from foresight.models.video_vqvae.model import VideoVQVAE

__all__ = ["VideoVQVAE", "VideoVQVAEConfig"]
