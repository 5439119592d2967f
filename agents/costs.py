"""Costs between imagined futures and a goal image (lower is better).

Axis legend::

    N  candidate action sequences     S  samples per candidate (stochastic models)
    T  predicted frames               D  embedding width

A cost is built once per goal and called on a model's output:

* pixel-space costs (`PixelCost`, `LPIPSCost`) take predicted frames ``[N, S, T, 3, H, W]`` in [0, 1];
* `EmbeddingCost` takes model-space embeddings ``[N, S, T, D]`` from ``model.predict_embeddings`` so a model
  such as HARP can skip decoding its codes into pixels.

``cost.space`` says which of the two a cost wants ("pixels" or "embeddings"); the MPC agent asks the model
for that. Every cost returns ``[N]``: per-step distances weighted over the horizon (`horizon_weights`), summed
over T and averaged over the S samples.

    cost = PixelCost(goal_image, weighting="final")         # goal_image [3, H, W] in [0, 1]
    c = cost(model.predict(context, actions, num_samples=1))  # [N]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from foresight.world_model import check_frames

__all__ = ["Cost", "PixelCost", "LPIPSCost", "EmbeddingCost", "gaussian_blur", "horizon_weights", "make_cost"]

WEIGHTINGS = ("final", "all", "linear")


def horizon_weights(horizon: int, weighting: str | Tensor = "final") -> Tensor:
    """Weights ``[T]`` over the predicted steps.

    "final": only the last frame counts (the goal should be reached at the end of the plan);
    "all": every step equally (rewards getting there early); "linear": 1..T rising, normalised to sum T.
    A tensor ``[T]`` is used as given.
    """
    if isinstance(weighting, Tensor):
        if weighting.shape != (horizon,):
            raise ValueError(f"weighting: expected a tensor [{horizon}], got {list(weighting.shape)}")
        return weighting.float()
    if weighting == "final":
        w = torch.zeros(horizon)
        w[-1] = 1.0
        return w
    if weighting == "all":
        return torch.ones(horizon)
    if weighting == "linear":
        w = torch.arange(1, horizon + 1, dtype=torch.float32)
        return w * horizon / w.sum()
    raise ValueError(f"weighting: expected one of {WEIGHTINGS} or a tensor [T], got {weighting!r}")


class Cost:
    """Base: a goal, a horizon weighting and the reduction over steps and samples."""

    space = "pixels"

    def __init__(self, *, weighting: str | Tensor = "final"):
        if not isinstance(weighting, Tensor) and weighting not in WEIGHTINGS:
            raise ValueError(f"weighting: expected one of {WEIGHTINGS} or a tensor [T], got {weighting!r}")
        self.weighting = weighting

    def steps_needed(self, horizon: int) -> list[int]:
        """Indices of the predicted steps with non-zero weight (a simulator can render only these)."""
        return [int(i) for i in torch.nonzero(horizon_weights(horizon, self.weighting)).flatten()]

    def per_step(self, predicted: Tensor) -> Tensor:
        """Distances ``[N, S, T]`` of each predicted step to the goal."""
        raise NotImplementedError

    def __call__(self, predicted: Tensor) -> Tensor:
        d = self.per_step(predicted)  # [N, S, T]
        w = horizon_weights(d.shape[-1], self.weighting).to(d.device)
        return (d * w).sum(-1).mean(-1)  # [N]


def _check_goal(goal_image: Any) -> Tensor:
    """Goal ``[3, H, W]`` (or ``[1, 3, H, W]``) float in [0, 1] -> ``[3, H, W]``."""
    if isinstance(goal_image, Tensor) and goal_image.ndim == 3:
        goal_image = goal_image[None]
    return check_frames(goal_image, name="goal_image", ndim=4)[0]


def _check_predicted(predicted: Tensor, goal: Tensor) -> None:
    if not isinstance(predicted, Tensor) or predicted.ndim != 6 or predicted.shape[-3:] != goal.shape:
        got = list(predicted.shape) if isinstance(predicted, Tensor) else type(predicted).__name__
        raise ValueError(f"predicted: expected frames [N, S, T, {', '.join(map(str, goal.shape))}] "
                         f"(the goal's size), got {got}")


class PixelCost(Cost):
    """Squared pixel error to the goal image, SUMMED over pixels and channels (not averaged).

    The sum (as in the control-centric video-prediction benchmark) keeps costs of small differences large
    enough to rank candidates; the MPPI temperature is scale-free anyway.
    """

    def __init__(self, goal_image: Tensor, *, weighting: str | Tensor = "final", blur: float = 0.0):
        super().__init__(weighting=weighting)
        if not blur >= 0:
            raise ValueError(f"blur: expected a Gaussian sigma >= 0 in pixels, got {blur!r}")
        self.blur = float(blur)
        self.goal = _check_goal(goal_image)  # [3, H, W]
        self._goal_blurred = gaussian_blur(self.goal[None], self.blur)[0]  # [3, H, W]

    def per_step(self, predicted: Tensor) -> Tensor:
        _check_predicted(predicted, self.goal)
        steps = self.steps_needed(predicted.shape[2])
        out = predicted.new_zeros(predicted.shape[:3])  # [N, S, T]; zero-weight steps are never computed
        if steps:
            sel = predicted[:, :, steps] if len(steps) < predicted.shape[2] else predicted
            lead = sel.shape[:3]
            sel = gaussian_blur(sel.reshape(-1, *sel.shape[-3:]), self.blur).view(*lead, *sel.shape[-3:])
            out[:, :, steps] = (sel - self._goal_blurred.to(predicted.device)).pow(2).sum((-3, -2, -1))
        return out


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, 3, H, W]`` (reflect padding, kernel radius ceil(3 sigma)); sigma 0: as is.

    Why a pixel cost blurs: the summed squared error of sharp images is flat while the imagined arm does not
    overlap the goal's arm (every candidate scores the same), and blurring widens the basin so that
    "closer" is also "cheaper" from further away.
    """
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, (min(images.shape[-2:]) - 1))  # reflect padding needs radius < size
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # blur along W
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # blur along H


class LPIPSCost(Cost):
    """LPIPS distance to the goal image, using `foresight.metrics.lpips` with real offline weights.

    Raises a clear error (naming how to provide weights) when the backbone weights are missing; it never falls
    back to random features.
    """

    def __init__(self, goal_image: Tensor, *, weighting: str | Tensor = "final", net: str = "alex",
                 weights: str | None = None, batch_size: int = 256, lpips: Any = None):
        super().__init__(weighting=weighting)
        self.goal = _check_goal(goal_image)
        if lpips is None:
            try:
                from foresight.metrics.lpips import LPIPS  # lazy: heavy, and only this cost needs it
                lpips = LPIPS(net=net, weights=weights)
            except FileNotFoundError as e:  # WeightsNotFoundError subclasses it
                raise RuntimeError(f"LPIPSCost needs the LPIPS {net} backbone weights, which were not found: {e}") from e
        self.lpips = lpips
        self.batch_size = int(batch_size)

    def per_step(self, predicted: Tensor) -> Tensor:
        _check_predicted(predicted, self.goal)
        steps = self.steps_needed(predicted.shape[2])
        lead = predicted.shape[:3]
        out = predicted.new_zeros(lead)  # [N, S, T]; steps with zero weight are never computed
        if not steps:
            return out
        sel = predicted[:, :, steps]  # [N, S, T', 3, H, W]
        flat = sel.reshape(-1, *sel.shape[-3:])
        goal = self.goal.to(flat.device).expand_as(flat)
        dev = next(self.lpips.parameters()).device
        with torch.no_grad():
            d = torch.cat([self.lpips(flat[i:i + self.batch_size].to(dev), goal[i:i + self.batch_size].to(dev)).to(flat.device)
                           for i in range(0, flat.shape[0], self.batch_size)])
        out[:, :, steps] = d.view(*sel.shape[:3]).to(out.dtype)
        return out


class EmbeddingCost(Cost):
    """Squared distance in a world model's embedding space (e.g. HARP codes): no decoding needed.

    Needs ``model.supports_embeddings``; the goal is embedded once with ``model.embed``. Call it on
    ``model.predict_embeddings(...)`` output ``[N, S, T, D]``.
    """

    space = "embeddings"

    def __init__(self, goal_image: Tensor, model: Any, *, weighting: str | Tensor = "final"):
        super().__init__(weighting=weighting)
        if not getattr(model, "supports_embeddings", False):
            raise ValueError(f"EmbeddingCost: {type(model).__name__} offers no model-space embedding "
                             "(supports_embeddings is False); use a pixel or LPIPS cost")
        self.goal = _check_goal(goal_image)
        with torch.no_grad():
            emb = model.embed(self.goal[None].to(model.device))  # [1, D]
        self.goal_embedding = emb.reshape(-1).float()  # [D]

    def per_step(self, predicted: Tensor) -> Tensor:
        d = self.goal_embedding.numel()
        if not isinstance(predicted, Tensor) or predicted.ndim != 4 or predicted.shape[-1] != d:
            got = list(predicted.shape) if isinstance(predicted, Tensor) else type(predicted).__name__
            raise ValueError(f"predicted: expected embeddings [N, S, T, {d}], got {got}")
        return (predicted.float() - self.goal_embedding.to(predicted.device)).pow(2).sum(-1)  # [N, S, T]


def make_cost(name: str, goal_image: Tensor, *, model: Any = None, weighting: str | Tensor = "final",
              **kwargs) -> Cost:
    """Build a cost by name: 'pixel', 'lpips' or 'embedding' (needs ``model``)."""
    if name == "pixel":
        return PixelCost(goal_image, weighting=weighting, **kwargs)
    if name == "lpips":
        return LPIPSCost(goal_image, weighting=weighting, **kwargs)
    if name == "embedding":
        if model is None:
            raise ValueError("the 'embedding' cost needs the world model (model=...)")
        return EmbeddingCost(goal_image, model, weighting=weighting)
    raise ValueError(f"unknown cost {name!r}; choose from ['embedding', 'lpips', 'pixel']")
