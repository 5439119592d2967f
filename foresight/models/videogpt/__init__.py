"""VideoGPT: clip VQ-VAE (3D convs + axial attention) + GPT prior with cross-attention and conditional
LayerNorm (registered as type ``"videogpt"``)."""

from foresight.models.videogpt.config import VideoGPTConfig
from foresight.models.videogpt.model import VideoGPT

__all__ = ["VideoGPT", "VideoGPTConfig"]
