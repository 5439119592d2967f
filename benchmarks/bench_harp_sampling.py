"""HARP sampling speed: K/V-cached vs full recompute for a 10-frame rollout, and batched candidates.

    python benchmarks/bench_harp_sampling.py [--preset quick] [--threads 2] [--candidates 64] [--out FILE.json]

Weights are random (speed does not depend on training). Reports wall time, tokens/s and the speed-up of the
cache, checks that both paths sample identical codes for the same seed, and times decoding many candidate
action sequences that share one context (context encoded once, cache copied).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import foresight
from foresight.checkpoint import atomic_write_json
from foresight.models.harp import Harp, HarpConfig

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@dataclass
class BenchHarpSamplingConfig:
    """HARP sampling speed."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in HarpConfig.PRESETS}

    preset: str = "quick"    # model preset: tiny | quick | paper
    threads: int = 2         # torch CPU threads
    horizon: int = 10        # planned / predicted frames
    candidates: int = 64     # candidate action sequences per plan
    out: str | None = None   # write the results (JSON) here


def main(argv: list[str] | None = None) -> None:
    args = build_config(BenchHarpSamplingConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = foresight.preset(HarpConfig, args.preset)
    model = Harp(cfg).eval()
    s = cfg.image_size
    ctx = torch.rand(1, cfg.context_frames, 3, s, s)
    actions = torch.randn(1, args.horizon, cfg.action_dim)
    tokens = args.horizon * cfg.grid**2
    model.predict_codes(ctx, actions[:, :1], seed=0)  # warm-up
    cached, t_cache = timed(lambda: model.predict_codes(ctx, actions, seed=0, use_cache=True))
    full, t_full = timed(lambda: model.predict_codes(ctx, actions, seed=0, use_cache=False))
    n = args.candidates
    many, t_many = timed(lambda: model.predict_codes(ctx.expand(n, -1, -1, -1, -1), actions.expand(n, -1, -1).clone(),
                                                     seed=0))
    _, t_decode = timed(lambda: model.decode(many))
    result = {
        "preset": args.preset, "threads": args.threads, "horizon": args.horizon,
        "tokens_per_rollout": tokens, "transformer_params": sum(p.numel() for p in model.transformer.parameters()),
        "cached_s": round(t_cache, 3), "full_recompute_s": round(t_full, 3),
        "speedup": round(t_full / t_cache, 1),
        "cached_tokens_per_s": round(tokens / t_cache, 1), "full_tokens_per_s": round(tokens / t_full, 1),
        "same_codes": bool(torch.equal(cached, full)),
        "candidates": n, "candidates_s": round(t_many, 3), "candidates_tokens_per_s": round(n * tokens / t_many, 1),
        "decode_candidates_s": round(t_decode, 3),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    cli_main(main, BenchHarpSamplingConfig, __doc__)
