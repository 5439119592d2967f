"""MT50 evaluation throughput: env steps per second of each imitation method's policy, before and after the speedups.

For each method of `experiments/mt50_bc.py` (the CPU default's architectures: HARP ``quick`` with 1 + 3 frames, the
``quick`` CNN-LSTM and CNN-Transformer, untrained: weights do not change the compute) this runs the real
evaluation loop (`envs.mt50_eval.evaluate_policy`, in this process, one torch thread) on held-out reach-v3
variations for ``--max-steps`` steps each, three ways:

* ``baseline``: one env at a time, every frame of the window re-encoded at every step (the frame cache off);
* ``cache``: one env at a time, each frame encoded once (`Policy.encode_frames`);
* ``cache+batch B``: B envs stepped together with one batched policy call per step (``envs_per_worker=B``).

Untrained policies never succeed, so every episode runs all ``--max-steps`` steps and the step count is exact.
Throughput = env steps / wall seconds, simulation and rendering included (they do not batch: MuJoCo steps each env
in turn), so the speedup of the whole loop is bounded by the env's own share.

    python benchmarks/bench_policy_eval.py --out docs/bench/policy_eval.json
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import platform
import subprocess
import time
from dataclasses import dataclass

from experiments.common import cli_main, write_results
from foresight.config import build_config

METHODS = ("harp", "cnn_lstm", "cnn_transformer")


class _Factory:
    """Builds the same untrained policy for every task (seeded), with the frame cache on or off."""

    def __init__(self, method: str, cache: bool, image_size: int, future_frames: int):
        self.method, self.cache, self.image_size, self.future_frames = method, cache, image_size, future_frames

    def __call__(self, task: str):
        import torch

        from agents.policies import make_bc_policy
        from foresight.config import merge, preset
        from foresight.models.harp import Harp, HarpConfig

        torch.manual_seed(0)
        backbone = None
        if self.method in ("harp", "vq_transformer"):
            backbone = Harp(merge(preset(HarpConfig, "quick"), {
                "image_size": self.image_size, "action_dim": 0, "context_frames": 1,
                "future_frames": self.future_frames}))
        policy = make_bc_policy(self.method, backbone_model=backbone, preset="quick", action_dim=4,
                                image_size=self.image_size, history=1 + self.future_frames)
        policy.use_frame_cache = self.cache
        return policy.eval()


def measure(method: str, cache: bool, batch: int, *, trials: int, max_steps: int, image_size: int,
            future_frames: int) -> dict:
    """Env steps per second of the evaluation loop (`envs.mt50_eval`'s worker code, in this process); the
    policy and the envs are built and warmed up by a short untimed run first (in a real evaluation each worker
    builds them once per task: about 1 s per env, not counted here)."""
    from envs import mt50_eval

    mt50_eval._worker_init(_Factory(method, cache, image_size, future_frames), image_size, max_steps, batch)
    warm = mt50_eval._run_trials(("reach-v3", tuple(range(batch)), (False,) * batch))
    assert len(warm) == batch
    t0 = time.perf_counter()
    results = mt50_eval._run_trials(("reach-v3", tuple(range(trials)), (False,) * trials))
    seconds = time.perf_counter() - t0
    steps = sum(r.steps for r in results)
    return {"method": method, "frame_cache": cache, "envs_per_worker": batch, "env_steps": steps,
            "seconds": round(seconds, 2), "steps_per_second": round(steps / seconds, 1)}


@dataclass
class BenchPolicyEvalConfig:
    """MT50 evaluation throughput."""

    methods: tuple[str, ...] = METHODS  # methods measured
    batches: tuple[int, ...] = (4, 8)   # envs_per_worker values for cache+batch
    trials: int = 8                     # episodes per setting (a multiple of every batch)
    max_steps: int = 50                 # steps per episode
    image_size: int = 64                # H = W of the frames
    future_frames: int = 3              # policy window = 1 + this (mt50_bc's CPU default)
    out: str = ""                       # write the results here as JSON


def main(argv: list[str] | None = None) -> dict:
    cfg = build_config(BenchPolicyEvalConfig, sys.argv[1:] if argv is None else argv)
    import torch


    torch.set_num_threads(1)
    batches = list(cfg.batches)
    rows = []
    for method in cfg.methods:
        settings = [(False, 1), (True, 1)] + [(True, b) for b in batches]
        base = None
        for cache, batch in settings:
            row = measure(method, cache, batch, trials=cfg.trials, max_steps=cfg.max_steps,
                          image_size=cfg.image_size, future_frames=cfg.future_frames)
            base = base or row["steps_per_second"]
            row["speedup"] = round(row["steps_per_second"] / base, 2)
            rows.append(row)
            print(f"{method:16s} cache={cache!s:5s} envs={batch}: {row['steps_per_second']:7.1f} steps/s "
                  f"({row['speedup']:.2f}x)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {"command": "python benchmarks/bench_policy_eval.py " + " ".join(argv or sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch_threads": 1, "load_average": list(os.getloadavg()), "rows": rows}
    return write_results(cfg.out, results)


if __name__ == "__main__":
    cli_main(main, BenchPolicyEvalConfig, __doc__)
