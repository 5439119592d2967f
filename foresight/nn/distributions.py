"""Closed forms for diagonal Gaussians shared by the latent-variable models (GHVAE, Hier-VRNN)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_kl"]


def gaussian_kl(mean_q: Tensor, logstd_q: Tensor | float, mean_p: Tensor, logstd_p: Tensor) -> Tensor:
    """KL( N(mean_q, exp(logstd_q)^2) || N(mean_p, exp(logstd_p)^2) ) per element, in nats.

    ``logstd_q`` may be a number (GHVAE's posterior has one fixed std for every element)."""
    var_q = math.exp(2 * logstd_q) if isinstance(logstd_q, (int, float)) else torch.exp(2 * logstd_q)
    return logstd_p - logstd_q + (var_q + (mean_q - mean_p) ** 2) / (2 * torch.exp(2 * logstd_p)) - 0.5
