"""PSNR and SSIM on frames in [0, 1].

Both take tensors shaped ``[..., 3, H, W]`` (any leading axes: frames ``[N]``, clips ``[B, T]``, samples
``[B, S, T]``) and return one value per frame, shaped ``[...]``. Average over the time axis yourself for a per-clip
number (`values.mean(-1)`).

SSIM follows Wang et al. (2004) exactly as scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``:
an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, the SSIM map averaged over
the positions where the window fits inside the image, and over channels.
"""

from __future__ import annotations

import torch

# MSE floor: identical frames would give PSNR = inf and poison every mean; 1e-10 caps PSNR at 100 dB (range 1).
_MSE_FLOOR = 1e-10


def _check_pair(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target must have the same shape, got {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim < 3:
        raise ValueError(f"{name}: expected frames [..., C, H, W], got shape {tuple(pred.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per frame. pred, target: [..., C, H, W] in [0, data_range] -> [...]."""
    _check_pair(pred, target, "psnr")
    diff = pred.double() - target.double()
    mse = diff.pow(2).flatten(-3).mean(-1).clamp_min(_MSE_FLOOR * data_range**2)  # [...]
    return (10.0 * torch.log10(data_range**2 / mse)).to(pred.dtype if pred.is_floating_point() else torch.float32)


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [size]."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _band_matrix(n: int, size: int, sigma: float, device) -> torch.Tensor:
    """[n - size + 1, n] matrix whose row i holds the Gaussian taps at columns i .. i + size - 1."""
    g = gaussian_window(size, sigma, device=device)
    m = torch.zeros(n - size + 1, n, dtype=torch.float64, device=device)
    for k in range(size):
        m.diagonal(k).copy_(g[k].expand(n - size + 1))
    return m


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per frame. pred, target: [..., C, H, W] in [0, data_range] -> [...].

    Runs in float64: in flat regions (common in robot scenes) the variances E[x^2] - E[x]^2 are ~0 and float32
    round-off, divided by the tiny C2 = 9e-4, shifts SSIM by up to ~1e-5. Centring the inputs on data_range / 2
    shrinks that cancellation further. Agrees with scikit-image to ~1e-15.
    """
    _check_pair(pred, target, "ssim")
    *lead, c, h, w = pred.shape
    if h < win_size or w < win_size:
        raise ValueError(f"ssim: frames must be at least {win_size}x{win_size}, got {h}x{w}")
    dtype = torch.float64
    half = 0.5 * data_range
    x = pred.reshape(-1, c, h, w).to(dtype) - half  # [N, C, H, W], centred
    y = target.reshape(-1, c, h, w).to(dtype) - half

    # Separable 'valid' Gaussian filtering as two matmuls with band matrices: identical to scikit-image's
    # filter-then-crop-(win_size-1)/2-borders, and one batched GEMM for all five moment maps.
    gh = _band_matrix(h, win_size, sigma, x.device).to(dtype)  # [H-10, H]
    gw = _band_matrix(w, win_size, sigma, x.device).to(dtype)  # [W-10, W]
    moments = torch.stack([x, y, x * x, y * y, x * y])  # [5, N, C, H, W]
    mu_x, mu_y, exx, eyy, exy = gh @ moments @ gw.T  # each [N, C, H-10, W-10]
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    mu_x, mu_y = mu_x + half, mu_y + half  # back to the uncentred means for the luminance term
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    out = s_map.flatten(1).mean(1)  # [N]
    return out.reshape(lead).to(pred.dtype if pred.is_floating_point() else torch.float32)
