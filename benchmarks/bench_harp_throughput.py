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

import torch

import foresight
from foresight.checkpoint import atomic_write_json
from foresight.models.harp import Harp, HarpConfig

from experiments.common import argparser, cli_main  # noqa: E402

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


def main(argv: list[str] | None = None) -> None:
    ap = argparser(__doc__)
    ap.add_argument("--preset", default="paper", help="model preset: tiny | quick | paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device (default: cuda if available)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="training precision")
    ap.add_argument("--batch", type=int, default=16, help="clips per batch")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--candidates", type=int, default=200, help="candidate action sequences per plan")
    ap.add_argument("--horizon", type=int, default=10, help="planned / predicted frames")
    ap.add_argument("--peak-tflops", type=float, default=None, help="accelerator's dense peak for the MFU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    ap.add_argument("--out", default=None, help="write the results (JSON) here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
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
    cli_main(main)
