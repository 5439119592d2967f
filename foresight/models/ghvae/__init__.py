"""GHVAE: greedy hierarchical VAE world model (``type: ghvae``). See docs/ghvae.md."""

from .cache import FeatureCacheDataset
from .config import GHVAEConfig, ModuleShape, module_shapes
from .model import GHVAE

__all__ = ["GHVAE", "GHVAEConfig", "FeatureCacheDataset", "ModuleShape", "module_shapes"]
