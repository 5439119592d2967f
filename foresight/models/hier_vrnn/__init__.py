"""Hier-VRNN: hierarchical VRNN world model (``type: hier_vrnn``). See docs/hier_vrnn.md."""

from .config import HierVRNNConfig, feature_channels, pyramid_sizes
from .model import HierVRNN, gaussian_kl

__all__ = ["HierVRNN", "HierVRNNConfig", "gaussian_kl", "pyramid_sizes", "feature_channels"]
