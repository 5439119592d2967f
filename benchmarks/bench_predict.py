"""Prediction speed against what the hardware allows: FLOPs, latency and achieved FLOP/s of every world model.

For each model (a registered type built at ``preset``, untrained: weights do not change the compute) and each
thread count, in one process:

* FLOPs of one candidate rollout (``predict`` of 1 context + ``horizon`` actions), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` around a ``predict`` of ``candidates`` candidates;
* milliseconds per candidate at ``candidates`` x ``horizon`` (median of ``repeats`` timed calls after a warm-up);
* achieved GFLOP/s and its share of an fp32 matmul (1024^3) and of a 3x3 conv (64 -> 64 channels, 32x32, batch
  64) measured in the same process at the same thread count, so a busy machine lowers both alike;
* peak memory: the process's maximum resident set (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA, bf16
  autocast);
* with ``scaling=true``: latency against candidates (``scaling_candidates``) at ``horizon`` and against horizon
  (``scaling_horizons``) at ``candidates``, and the fitted cost per candidate / per step with the largest relative
  deviation from a straight line (where it is not linear).

    python benchmarks/bench_predict.py --models conv,ghvae,harp --threads 1,2 --out docs/bench/predict_cpu.json
    python benchmarks/bench_predict.py --models ghvae --size tiny --candidates 8 --horizon 3 --repeats 1
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import platform
import resource
import statistics
import subprocess
import time
from typing import Any, Callable

import torch

from experiments.common import UsageError, cli_main, write_results
from foresight.config import build_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling gpu_check, also when imported from tests
from gpu_check import count_flops  # noqa: E402


@dataclass
class BenchPredictConfig:
    """What to measure."""

    models: tuple[str, ...] = ("conv", "ghvae", "harp")  # registered model types
    size: str = "quick"                      # model preset: tiny / quick / paper
    candidates: int = 200                    # candidate action sequences per predict call
    horizon: int = 10                        # predicted frames per candidate
    threads: tuple[int, ...] = (1, 2)        # torch CPU threads (ignored on CUDA)
    repeats: int = 3                         # timed calls per setting (the median is reported)
    scaling: bool = False                    # also latency vs candidates and vs horizon
    scaling_candidates: tuple[int, ...] = (50, 100, 200, 400, 800)
    scaling_horizons: tuple[int, ...] = (5, 10, 20)
    device: str = "auto"                     # auto | cpu | cuda
    seed: int = 0
    out: str = ""                            # write the results here as JSON


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_rates(device: torch.device) -> dict[str, float]:
    """GFLOP/s of an fp32 1024^3 matmul and a 3x3 conv at this thread count (the hardware's attainable rate)."""
    n = 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    mm = _timed(lambda: a @ b, device, 5)
    x = torch.randn(64, 64, 32, 32, device=device)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
    with torch.inference_mode():
        conv_s = _timed(lambda: conv(x), device, 5)
    conv_flops = 2 * 64 * 64 * 9 * 32 * 32 * 64
    return {"matmul_gflops": 2 * n**3 / mm / 1e9, "conv_gflops": conv_flops / conv_s / 1e9}


def build_model(name: str, preset_name: str, device: torch.device):
    from foresight.config import preset
    from foresight.registry import get_model_class

    cls = get_model_class(name)
    return cls(preset(cls.config_class, preset_name)).to(device).eval()


def predict_fn(model, candidates: int, horizon: int, device: torch.device, seed: int) -> Callable[[], Any]:
    g = torch.Generator().manual_seed(seed)
    size, c = int(model.image_size), int(model.context_frames)
    context = torch.rand(1, c, 3, size, size, generator=g).to(device).expand(candidates, -1, -1, -1, -1)
    a = int(model.action_dim)
    actions = (torch.rand(candidates, horizon, a, generator=g) * 2 - 1).to(device) if a else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def run():
        with torch.inference_mode():
            if autocast is None:
                return model.predict(context, actions, horizon=horizon, seed=seed)
            with autocast:
                return model.predict(context, actions, horizon=horizon, seed=seed)

    return run


def _line_fit(xs: list[int], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = a + b x`` and the largest |y - fit| / fit."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    a = my - b * mx
    dev = max(abs(y - (a + b * x)) / max(a + b * x, 1e-12) for x, y in zip(xs, ys))
    return {"intercept_ms": a * 1e3, "slope_ms": b * 1e3, "max_relative_deviation": dev}


def measure_model(cfg: BenchPredictConfig, name: str, device: torch.device, ref: dict[str, float]) -> dict[str, Any]:
    model = build_model(name, cfg.size, device)
    if cfg.horizon > getattr(model, "future_frames", cfg.horizon) and name in ("videogpt", "video_vqvae"):
        raise UsageError(f"{name} {cfg.size}: horizon {cfg.horizon} > its future_frames {model.future_frames}")
    fn = predict_fn(model, cfg.candidates, cfg.horizon, device, cfg.seed)
    flops = count_flops(fn)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(fn, device, cfg.repeats)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    achieved = flops / seconds / 1e9
    row: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflop_per_candidate": flops / cfg.candidates / 1e9,
        "ms_per_candidate": seconds / cfg.candidates * 1e3,
        "seconds_per_call": seconds,
        "achieved_gflops": achieved,
        "share_of_matmul": achieved / ref["matmul_gflops"],
        "share_of_conv": achieved / ref["conv_gflops"],
        "peak_memory_mib": peak / 2**20,
    }
    if cfg.scaling:
        ns = list(cfg.scaling_candidates)
        by_n = [_timed(predict_fn(model, n, cfg.horizon, device, cfg.seed), device, cfg.repeats) for n in ns]
        hs = list(cfg.scaling_horizons)
        by_h = [_timed(predict_fn(model, cfg.candidates, h, device, cfg.seed), device, cfg.repeats) for h in hs]
        row["scaling"] = {
            "candidates": dict(zip(map(str, ns), [s * 1e3 for s in by_n])),
            "candidates_fit": _line_fit(ns, by_n),
            "horizon": dict(zip(map(str, hs), [s * 1e3 for s in by_h])),
            "horizon_fit": _line_fit(hs, by_h),
        }
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = build_config(BenchPredictConfig, sys.argv[1:] if argv is None else argv)
    if cfg.candidates < 1 or cfg.horizon < 1 or cfg.repeats < 1 or not cfg.threads or min(cfg.threads) < 1:
        raise UsageError("candidates, horizon, repeats and every threads value must be >= 1")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device: expected auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but torch sees no CUDA device")
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    from foresight.registry import available_models

    unknown = [m for m in cfg.models if m not in available_models()]
    if unknown:
        raise UsageError(f"unknown model type(s) {unknown}; known: {available_models()}")
    threads = list(cfg.threads) if device.type == "cpu" else [torch.get_num_threads()]
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_predict.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "load_average": list(os.getloadavg()), "size": cfg.size, "candidates": cfg.candidates,
        "horizon": cfg.horizon, "runs": {}}
    for t in threads:
        torch.set_num_threads(t)
        ref = reference_rates(device)
        run: dict[str, Any] = {"reference": ref, "models": {}}
        for name in cfg.models:
            row = measure_model(cfg, name, device, ref)
            run["models"][name] = row
            print(f"threads {t} {name:12s} {row['gflop_per_candidate']:.3f} GFLOP/candidate, "
                  f"{row['ms_per_candidate']:.2f} ms/candidate, {row['achieved_gflops']:.1f} GFLOP/s = "
                  f"{100 * row['share_of_matmul']:.0f}% of matmul ({ref['matmul_gflops']:.1f}), "
                  f"{100 * row['share_of_conv']:.0f}% of conv ({ref['conv_gflops']:.1f})", flush=True)
        results["runs"][str(t)] = run
    return write_results(cfg.out, results)


if __name__ == "__main__":
    cli_main(main, BenchPredictConfig, __doc__)
