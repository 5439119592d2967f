"""GHVAE training memory (greedy phase k vs end-to-end) and planning latency, on CPU.

    python benchmarks/bench_ghvae.py [--preset quick] [--batch 8] [--threads 2] [--candidates 200] [--out FILE]

Memory, for each greedy phase k (module k trains, modules < k frozen and read from the feature cache) and for
end-to-end training of all K modules (stage ``finetune``), one training step (forward, backward, AdamW step)
on a clip batch of 2 + 10 frames, each configuration in a fresh subprocess:

* ``saved_mb``: bytes autograd saves for the backward pass (counted with saved-tensor hooks, each storage once)
  -- the activation memory that end-to-end training must hold;
* ``state_mb``: trainable weights + their gradients + AdamW's two moments;
* ``peak_rss_mb``: peak resident memory of the process during the step minus its level before (ru_maxrss).

Latency: ``predict`` of ``--candidates`` action sequences x ``--horizon`` steps from one context (what a random
shooting / CEM planner asks per iteration), batched over candidates, one forward pass per predicted frame; wall
and process CPU seconds (the machine may be shared: CPU seconds are the steadier number). Weights are random:
speed and memory do not depend on training.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import dataclasses
import json
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import foresight
from foresight.models.ghvae import GHVAE, GHVAEConfig

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_stage(preset: str, stage: str, batch: int, num_modules: int | None, checkpoint: bool = False) -> dict:
    """One training step of ``stage``; runs in its own process (see main)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(foresight.preset(GHVAEConfig, preset), checkpoint_frozen=checkpoint)
    if num_modules:
        cfg = dataclasses.replace(cfg, num_modules=num_modules)
    model = GHVAE(cfg).set_stage(stage)
    n, s = cfg.context_frames + cfg.future_frames, cfg.image_size
    data = {"frames": torch.rand(batch, n, 3, s, s), "actions": torch.rand(batch, n - 1, cfg.action_dim) * 2 - 1}
    if model.frozen_modules:  # what the feature cache serves in phase k
        with torch.no_grad():
            hs = model.encode(data["frames"].flatten(0, 1), model.frozen_modules)
        data.update({f"h{j}": h.view(batch, n, *h.shape[1:]).to(torch.float16) for j, h in enumerate(hs, 1)})
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    # warm-up step (allocator, lazy init), then the measured one
    loss, _ = model(data)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            st = t.untyped_storage()
            saved[st.data_ptr()] = max(saved.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    before = _rss_peak_mb()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model(data)
    loss.backward()
    opt.step()
    step_s = time.perf_counter() - t0
    peak = _rss_peak_mb()
    n_train = sum(p.numel() for p in params)
    return {"stage": stage, "checkpoint_frozen": checkpoint, "trainable_params_M": round(n_train / 1e6, 3),
            "saved_mb": round(sum(saved.values()) / 2**20, 1), "state_mb": round(4 * n_train * 4 / 2**20, 1),
            "peak_rss_mb": round(peak - before, 1), "step_s": round(step_s, 2)}


def latency(preset: str, candidates: int, horizon: int, num_modules: int | None, reps: int) -> dict:
    torch.manual_seed(0)
    cfg = foresight.preset(GHVAEConfig, preset)
    if num_modules:
        cfg = dataclasses.replace(cfg, num_modules=num_modules)
    model = GHVAE(cfg).set_stage("finetune").eval()
    s = cfg.image_size
    context = torch.rand(1, cfg.context_frames, 3, s, s).expand(candidates, -1, -1, -1, -1)
    actions = torch.rand(candidates, horizon, cfg.action_dim) * 2 - 1
    model.predict(context[:2], actions[:2], seed=0)  # warm-up
    walls, cpus = [], []
    for r in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        out = model.predict(context, actions, seed=r)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    assert out.shape == (candidates, 1, horizon, 3, s, s)
    return {"candidates": candidates, "horizon": horizon, "depth": model.depth, "reps": reps,
            "wall_s": [round(v, 2) for v in walls], "cpu_s": [round(v, 2) for v in cpus],
            "wall_s_min": round(min(walls), 2), "ms_per_candidate_frame": round(1000 * min(walls) / (candidates * horizon), 2)}


@dataclass
class BenchGHVAEConfig:
    """GHVAE training memory and planning latency."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in GHVAEConfig.PRESETS}

    preset: str = "quick"            # model preset: tiny | quick | paper
    modules: int | None = None       # K (default: the preset's)
    batch: int = 8                   # clips per batch
    threads: int = 2                 # torch CPU threads
    candidates: int = 200            # candidate action sequences per plan
    horizon: int = 10                # planned / predicted frames
    reps: int = 2                    # repetitions of each latency measurement
    skip_memory: bool = False        # skip the training-memory measurement
    checkpoint_frozen: bool = False  # also measure greedy phases with checkpoint_frozen=True (recomputed backward)
    skip_latency: bool = False       # skip the planning-latency measurement
    stage: str | None = None         # internal: the child process measures this one training stage
    out: str | None = None           # write the results (JSON) here


def main(argv: list[str] | None = None) -> None:
    args = build_config(BenchGHVAEConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    if args.stage:  # child: one configuration, JSON on the last line
        print(json.dumps(measure_stage(args.preset, args.stage, args.batch, args.modules, args.checkpoint_frozen)))
        return

    cfg = foresight.preset(GHVAEConfig, args.preset)
    k = args.modules or cfg.num_modules
    result: dict = {"preset": args.preset, "num_modules": k, "batch": args.batch, "threads": args.threads,
                    "clip": f"{cfg.context_frames}+{cfg.future_frames}", "image_size": cfg.image_size,
                    "params_M": round(GHVAE(dataclasses.replace(cfg, num_modules=k)).num_parameters() / 1e6, 2)}
    if not args.skip_memory:
        result["memory"] = []
        runs = [(f"module{i}", False) for i in range(1, k + 1)] + [("finetune", False)]
        if args.checkpoint_frozen:
            runs += [(f"module{i}", True) for i in range(2, k + 1)]
        for stage, ckpt in runs:
            cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--threads",
                   str(args.threads), "--stage", stage] + (["--modules", str(k)] if args.modules else [])
            cmd += ["--checkpoint-frozen"] if ckpt else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            result["memory"].append(row)
            print(json.dumps(row), flush=True)
    if not args.skip_latency:
        result["latency"] = latency(args.preset, args.candidates, args.horizon, args.modules, args.reps)
        print(json.dumps(result["latency"]), flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli_main(main, BenchGHVAEConfig, __doc__)
