"""HARP transformer training throughput (tokens/s, model FLOP utilisation) and planner-sized sampling throughput.

    python benchmarks/bench_harp_throughput.py                       # paper preset, CUDA, bf16 autocast
    python benchmarks/bench_harp_throughput.py --preset tiny --device cpu --precision fp32 --steps 3   # smoke run

Training: stage 2 on random codes (speed does not depend on the data), AdamW, ``--batch`` windows of C+F frames;
warm-up steps are not timed. Tokens/s counts every slot of the window (C+F frames x h*w codes).

Model FLOPs per trained token follow the PaLM appendix convention: ``6 * P + 12 * layers * width * L`` with P the
parameters of the transformer's matmuls (blocks + output head; embedding tables excluded) and L the window length
(the attention term is not halved for causality). The ResNet context network is left out, so the utilisation is a
lower bound. MFU = achieved model FLOP/s divided by the accelerator's dense bf16 peak (``--peak-tflops``; known
for a few GPUs by name).

Sampling: ``--candidates`` action sequences sharing one context (a planner's batch), ``--horizon`` frames, top-k
with the K/V cache; tokens/s = candidates x horizon x h*w / seconds (decoding to pixels timed separately).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

import foresight
from foresight.checkpoint import atomic_write_json
from foresight.models.harp import Harp, HarpConfig

from experiments.common import UsageError, cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402

# dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "RTX 4090": 165.2}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_params(model: Harp) -> int:
    tr = model.transformer
    return sum(p.numel() for p in tr.transformer.parameters() if p.ndim == 2) + tr.head.weight.numel()


@dataclass
class BenchHarpThroughputConfig:
    """HARP training and sampling throughput."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in HarpConfig.PRESETS}

    preset: str = "paper"                        # model preset: tiny | quick | paper
    device: str = "auto"                         # torch device (auto: cuda if available, else cpu)
    precision: Literal["bf16", "fp32"] = "bf16"  # training precision
    batch: int = 16                              # clips per batch
    steps: int = 20                              # timed training steps
    warmup: int = 3                              # untimed training steps first
    candidates: int = 200                        # candidate action sequences per plan
    horizon: int = 10                            # planned / predicted frames
    peak_tflops: float | None = None             # accelerator's dense peak for the MFU
    threads: int | None = None                   # torch CPU threads (CPU runs)
    out: str | None = None                       # write the results (JSON) here


def main(argv: list[str] | None = None) -> None:
    args = build_config(BenchHarpThroughputConfig, sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                              else args.device)
    except RuntimeError as e:
        raise UsageError(f"--device {args.device}: not a torch device ({e})") from None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfg = foresight.preset(HarpConfig, args.preset)
    model = Harp(cfg).to(device).set_stage("transformer")
    c, f, g, s = cfg.context_frames, cfg.future_frames, cfg.grid, cfg.image_size
    seq = (c + f) * g * g
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    # ---- training throughput
    batch = {"codes": torch.randint(0, cfg.codebook_size, (args.batch, c + f, g, g), device=device),
             "actions": torch.randn(args.batch, c + f - 1, cfg.action_dim, device=device),
             "context": torch.rand(args.batch, c, 3, s, s, device=device)}
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        with autocast:
            loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    train_s = (time.perf_counter() - t0) / args.steps
    tokens_per_s = args.batch * seq / train_s
    flops_per_token = 6 * matmul_params(model) + 12 * cfg.layers * cfg.width * seq
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "preset": args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision, "batch": args.batch, "window_tokens": seq,
        "transformer_matmul_params": matmul_params(model), "train_step_s": round(train_s, 4),
        "train_tokens_per_s": round(tokens_per_s, 1),
        "model_tflops_per_s": round(flops_per_token * tokens_per_s / 1e12, 2),
        "peak_tflops": peak, "mfu": round(flops_per_token * tokens_per_s / (peak * 1e12), 4) if peak else None,
        "train_peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                                  if device.type == "cuda" else None),
    }

    # ---- sampling throughput: one context, many candidate action sequences
    model.eval()
    n = args.candidates
    ctx = torch.rand(1, c, 3, s, s, device=device).expand(n, -1, -1, -1, -1)
    actions = torch.randn(n, args.horizon, cfg.action_dim, device=device)
    with autocast:
        model.predict_codes(ctx[:2], actions[:2, :1], seed=0)  # warm-up (kernels, allocator)
        sync(device)
        t0 = time.perf_counter()
        codes = model.predict_codes(ctx, actions, seed=0)
        sync(device)
        sample_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.decode(codes)
        sync(device)
        decode_s = time.perf_counter() - t0
    result.update({"candidates": n, "horizon": args.horizon, "sample_s": round(sample_s, 3),
                   "sample_tokens_per_s": round(n * args.horizon * g * g / sample_s, 1),
                   "decode_s": round(decode_s, 3)})
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    cli_main(main, BenchHarpThroughputConfig, __doc__)
