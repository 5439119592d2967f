"""The evaluation protocol of stochastic video prediction papers (SVG, Hier-VRNN, GHVAE, HARP).

For each test clip the model draws S samples of the future. Per sample and frame we compute PSNR, SSIM and
LPIPS against the true future. For each metric the *best* sample of a clip is the one with the best mean over
time (highest PSNR / SSIM, lowest LPIPS), chosen separately per metric; "best" numbers and per-timestep curves
average that sample over clips. "mean" numbers average over all samples (what a random draw would score).
FVD compares the true clips with all B*S sampled clips, and also reports the mean / std over draws of one random
sample per clip (the Hier-VRNN variant). The FVD settings that change the number travel with it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .fvd import MIN_FRAMES, fvd_from_features, i3d_features
from .image import psnr, ssim
from .lpips import LPIPS

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}


def _summary(values: torch.Tensor, higher_is_better: bool) -> dict:
    """values [B, S, T] -> best/mean scalars, per-timestep curves [T], and the best sample index per clip."""
    per_sample = values.mean(-1)  # [B, S]
    best = per_sample.argmax(1) if higher_is_better else per_sample.argmin(1)  # [B]
    best_curves = values[torch.arange(values.shape[0]), best]  # [B, T]
    return {
        "best": float(best_curves.mean()),
        "mean": float(values.mean()),
        "per_timestep_best": best_curves.mean(0).tolist(),
        "per_timestep_mean": values.mean((0, 1)).tolist(),
        "best_sample": best.tolist(),
    }


def _chunked(fn, pred: torch.Tensor, truth: torch.Tensor, chunk: int, device) -> torch.Tensor:
    """Apply a per-frame metric to [N, 3, H, W] pairs in chunks on ``device``; returns [N] on the CPU."""
    out = [fn(pred[i : i + chunk].to(device), truth[i : i + chunk].to(device)).float().cpu() for i in range(0, pred.shape[0], chunk)]
    return torch.cat(out)


@torch.inference_mode()
def evaluate_predictions(
    pred: torch.Tensor,
    truth: torch.Tensor,
    *,
    context: torch.Tensor | None = None,
    lpips: LPIPS | None | bool = None,
    i3d: nn.Module | None | bool = None,
    fvd_include_context: bool = True,
    fvd_draws: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    i3d_batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """Best-of-N image metrics, per-timestep curves and FVD for sampled futures.

    Args:
        pred: [B, S, T, 3, H, W] in [0, 1], S samples of the T future frames of each of B clips.
        truth: [B, T, 3, H, W] in [0, 1], the true future frames.
        context: [B, C, 3, H, W] in [0, 1], the given frames; prepended to both real and sampled clips for FVD
            when ``fvd_include_context`` (the common choice for short horizons, since I3D needs >= 9 frames).
        lpips: an `LPIPS` module; None loads AlexNet LPIPS; False skips LPIPS.
        i3d: a loaded I3D (`load_i3d`); None loads it; False skips FVD.
        fvd_draws: number of one-random-sample-per-clip FVD draws (reuses the same features, costs no I3D time).
        device: where the networks run (default: CUDA if available, else CPU).

    Returns:
        A JSON-serialisable dict: ``psnr`` / ``ssim`` / ``lpips`` each with ``best``, ``mean``,
        ``per_timestep_best`` [T], ``per_timestep_mean`` [T], ``best_sample`` [B]; ``fvd`` with ``all_samples``,
        ``one_sample_mean``, ``one_sample_std`` and ``settings`` (or ``skipped`` with the reason); plus the
        sizes ``num_clips``, ``num_samples``, ``horizon``, ``image_size``.
    """
    if pred.ndim != 6 or pred.shape[3] != 3:
        raise ValueError(f"pred: expected [B, S, T, 3, H, W], got {tuple(pred.shape)}")
    b, s, t = pred.shape[:3]
    if truth.shape != (b, t, *pred.shape[3:]):
        raise ValueError(f"truth: expected {[b, t, *pred.shape[3:]]} to match pred {list(pred.shape)}, got {list(truth.shape)}")
    if context is not None and (context.ndim != 5 or context.shape[0] != b or context.shape[2:] != truth.shape[2:]):
        raise ValueError(f"context: expected [{b}, C, {', '.join(map(str, truth.shape[2:]))}], got {list(context.shape)}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    flat_pred = pred.reshape(b * s * t, *pred.shape[3:])  # [B*S*T, 3, H, W]
    flat_truth = truth.unsqueeze(1).expand(b, s, *truth.shape[1:]).reshape(b * s * t, *truth.shape[2:])
    result: dict = {"num_clips": b, "num_samples": s, "horizon": t, "image_size": list(pred.shape[-2:])}

    per_frame = {
        "psnr": _chunked(psnr, flat_pred, flat_truth, batch_size, device),
        "ssim": _chunked(ssim, flat_pred, flat_truth, batch_size, device),
    }
    if lpips is not False and min(pred.shape[-2:]) < getattr(lpips, "min_size", 31):
        result["lpips"] = {"skipped": f"frames of {tuple(pred.shape[-2:])} are too small for LPIPS"}
    elif lpips is not False:
        lpips = LPIPS() if lpips is None else lpips
        lpips.to(device)
        per_frame["lpips"] = _chunked(lpips, flat_pred, flat_truth, batch_size, device)
        result["lpips_weights"] = getattr(lpips, "weights_source", None)
    for name, values in per_frame.items():
        result[name] = _summary(values.reshape(b, s, t), HIGHER_IS_BETTER[name])

    if i3d is not False:
        result["fvd"] = _fvd_block(pred, truth, context, i3d, fvd_include_context, fvd_draws, seed, i3d_batch_size, device, progress)
    return result


def _fvd_block(pred, truth, context, i3d, include_context, draws, seed, batch_size, device, progress) -> dict:
    b, s, t = pred.shape[:3]
    use_context = include_context and context is not None
    c = context.shape[1] if use_context else 0
    settings = {
        "num_real_clips": b,
        "num_fake_clips": b * s,
        "clip_length": c + t,
        "context_included": use_context,
        "context_frames": c,
        "i3d_input": "224x224 bilinear, [-1, 1]",
        "features": "I3D Kinetics-400 logits",
    }
    if c + t < MIN_FRAMES:
        return {"skipped": f"clips of {c + t} frames are shorter than the {MIN_FRAMES} that I3D needs", "settings": settings}
    if b < 2:
        return {"skipped": "FVD needs at least 2 clips to estimate a covariance", "settings": settings}
    if i3d is None:
        from .i3d import load_i3d

        i3d = load_i3d()
    i3d.to(device)
    settings["weights"] = getattr(i3d, "weights_source", None)

    real = truth if not use_context else torch.cat([context, truth], 1)  # [B, C+T, 3, H, W]
    fake = pred.reshape(b * s, t, *pred.shape[3:])  # [B*S, T, 3, H, W]
    if use_context:
        fake = torch.cat([context.repeat_interleave(s, 0), fake], 1)  # [B*S, C+T, 3, H, W]
    kw = dict(i3d=i3d, batch_size=batch_size, device=device, progress=progress)
    f_real = i3d_features(real, **kw)  # [B, 400]
    f_fake = i3d_features(fake, **kw).reshape(b, s, -1)  # [B, S, 400]

    rng = np.random.default_rng(seed)
    one = [fvd_from_features(f_real, f_fake[np.arange(b), rng.integers(0, s, size=b)]) for _ in range(max(draws, 1))]
    return {
        "all_samples": fvd_from_features(f_real, f_fake.reshape(b * s, -1)),
        "one_sample_mean": float(np.mean(one)),
        "one_sample_std": float(np.std(one)),
        "one_sample_draws": len(one),
        "settings": settings,
    }
