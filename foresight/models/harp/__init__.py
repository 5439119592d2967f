"""HARP: VQ-GAN tokenizer + causal transformer world model (registered as type ``"harp"``)."""

from foresight.models.harp.config import HarpConfig
from foresight.models.harp.model import CachedCodes, Harp

__all__ = ["Harp", "HarpConfig", "CachedCodes"]
