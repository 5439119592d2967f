"""Throughput of the video-prediction metrics on synthetic clips (CPU by default).

    python benchmarks/bench_metrics.py --clips 256 --frames 12 --size 64 --threads 2 --out runs/bench/metrics.json

Times PSNR, SSIM and LPIPS over all clips x frames, and FVD (I3D features of the real and the fake set, then the
Frechet distance). Fake clips are the real ones plus Gaussian noise, so FVD is a meaningful non-zero number.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import json
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from foresight.checkpoint import atomic_write_json  # noqa: E402
from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


@dataclass
class Args:
    """Metric throughput on synthetic clips."""

    clips: int = 256  # number of clips (real and fake each)
    frames: int = 12  # frames per clip (I3D needs >= 9)
    size: int = 64  # frame height = width
    noise: float = 0.1  # std of the noise that turns real clips into fake ones
    threads: int = 2  # torch CPU threads
    device: str = "cpu"  # torch device of the metric networks
    lpips_batch: int = 256  # frames per LPIPS call
    i3d_batch: int = 8  # clips per I3D call
    fvd_clips: int = -1  # clips used for FVD (-1: all)
    skip_fvd: bool = False  # measure PSNR / SSIM / LPIPS only
    seed: int = 0  # seeds the synthetic clips
    out: str = ""  # optional JSON output path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    cfg = build_config(Args, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(cfg.threads)
    from foresight.metrics import LPIPS, load_i3d, psnr, ssim
    from foresight.metrics.fvd import fvd_from_features, i3d_features

    g = torch.Generator().manual_seed(cfg.seed)
    # Smooth random clips (upsampled noise) look more like video than white noise does.
    base = torch.rand(cfg.clips, cfg.frames, 3, cfg.size // 8, cfg.size // 8, generator=g)
    real = torch.nn.functional.interpolate(base.flatten(0, 1), size=(cfg.size, cfg.size), mode="bilinear").view(
        cfg.clips, cfg.frames, 3, cfg.size, cfg.size
    )
    fake = (real + cfg.noise * torch.randn(real.shape, generator=g)).clamp(0, 1)
    n_frames = cfg.clips * cfg.frames
    res: dict = {"args": asdict(cfg), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                 "torch": torch.__version__, "load_avg_start": os.getloadavg()}

    with torch.inference_mode():
        _, t = timed(lambda: psnr(fake, real))
        res["psnr_s"], res["psnr_frames_per_s"] = t, n_frames / t
        _, t = timed(lambda: ssim(fake, real))
        res["ssim_s"], res["ssim_frames_per_s"] = t, n_frames / t
    lp, t = timed(lambda: LPIPS().to(cfg.device))
    res["lpips_load_s"] = t
    d, t = timed(lambda: lp.distance(fake.to(cfg.device), real.to(cfg.device), batch_size=cfg.lpips_batch))
    res["lpips_s"], res["lpips_frames_per_s"], res["lpips_mean"] = t, n_frames / t, float(d.mean())
    print(json.dumps({k: v for k, v in res.items() if k != "args"}, indent=1), flush=True)

    if not cfg.skip_fvd:
        n = cfg.clips if cfg.fvd_clips < 0 else cfg.fvd_clips
        i3d, t = timed(lambda: load_i3d(device=cfg.device))
        res["i3d_load_s"] = t
        kw = dict(i3d=i3d, batch_size=cfg.i3d_batch, device=cfg.device, progress=True)
        f_real, t_real = timed(lambda: i3d_features(real[:n], **kw))
        f_fake, t_fake = timed(lambda: i3d_features(fake[:n], **kw))
        value, t_fd = timed(lambda: fvd_from_features(f_real, f_fake))
        res.update(fvd=value, fvd_clips=n, fvd_frames=cfg.frames, fvd_features_s=t_real + t_fake,
                   fvd_frechet_s=t_fd, fvd_total_s=t_real + t_fake + t_fd, i3d_clips_per_s=2 * n / (t_real + t_fake))
    res["load_avg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if cfg.out:
        atomic_write_json(cfg.out, res, indent=1)


if __name__ == "__main__":
    cli_main(main, Args, __doc__)
