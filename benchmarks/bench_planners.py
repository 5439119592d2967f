"""Planner benchmarks: optimiser convergence on a known optimum, and planning latency per action per model.

    python benchmarks/bench_planners.py optimizers           # evaluations to reach the optimum vs random shooting
    python benchmarks/bench_planners.py latency --models copy_last,conv,harp,ghvae,simulator \
        --samples 200 --iterations 3 --horizon 10

The first word names the benchmark (the same as ``what=optimizers`` / ``--what latency``).

Latency = wall time of one `VisualMPC` planning step (the time per executed action when replanning every step),
on whatever device torch picks (CPU here). Learned models are built from their "quick" preset with random
weights: latency does not depend on training. The simulator model renders only the final frame (final-step cost).
``--measure-samples`` measures on a smaller population and extrapolates linearly (rows say so) for slow models.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import json
import os
import time
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from agents.mpc import VisualMPC
from agents.optimizers import CEM, ICEM, MPPI, RandomShooting

from experiments.common import UsageError, cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


# ---------------------------------------------------------------------------------------------- optimisers
def bench_optimizers(horizon: int = 10, action_dim: int = 4, tol: float = 1e-2, seeds: int = 5) -> list[dict]:
    """Quadratic sum (a - a*)^2 over [H, A] with a* inside [-1, 1]: evaluations until cost < tol."""
    rows = []
    # 200 samples with 10-20 % elites: with fewer elites than dimensions CEM's std collapses before the mean
    # converges (measured: 100 samples / 10 elites stall at cost ~0.03-0.27 on the 40-d problem).
    makers = {
        "cem": lambda: CEM(num_samples=200, iterations=40, elite_frac=0.1),
        "cem_full_cov": lambda: CEM(num_samples=200, iterations=40, full_covariance=True, elite_frac=0.2),
        "icem_white_no_decay": lambda: ICEM(num_samples=200, iterations=40, elite_frac=0.1, noise_beta=0.0,
                                            population_decay=1.0),
        "icem_paper_defaults": lambda: ICEM(num_samples=200, iterations=40),
        "mppi": lambda: MPPI(num_samples=200, iterations=40, temperature=1.0),
    }
    low, high = -torch.ones(action_dim), torch.ones(action_dim)
    for name, make in makers.items():
        evals_needed, finals, rs_costs = [], [], []
        for seed in range(seeds):
            target = torch.rand(horizon, action_dim, generator=torch.Generator().manual_seed(100 + seed)) * 1.6 - 0.8
            count = {"n": 0, "hit": None}

            def objective(a, target=target, count=count):
                c = (a - target).pow(2).sum((1, 2))
                count["n"] += a.shape[0]
                if count["hit"] is None and float(c.min()) < tol:
                    count["hit"] = count["n"]
                return c

            res = make().optimize(objective, horizon=horizon, action_low=low, action_high=high, seed=seed)
            evals_needed.append(count["hit"])
            finals.append(res.cost)
            budget = count["hit"] or res.num_evaluations
            rs = RandomShooting(num_samples=budget).optimize(lambda a, t=target: (a - t).pow(2).sum((1, 2)),
                                                             horizon=horizon, action_low=low, action_high=high,
                                                             seed=seed)
            rs_costs.append(rs.cost)
        hits = [e for e in evals_needed if e is not None]
        rows.append({"optimizer": name, "problem": f"quadratic H={horizon} A={action_dim}", "tolerance": tol,
                     "reached": f"{len(hits)}/{seeds}",
                     "evals_to_tol_median": float(np.median(hits)) if hits else None,
                     "final_cost_median": float(np.median(finals)),
                     "random_shooting_same_budget_cost_median": float(np.median(rs_costs))})
    return rows


# ---------------------------------------------------------------------------------------------- latency
def _model(name: str, image_size: int = 64):
    import foresight
    from foresight.config import preset

    if name == "copy_last":
        from foresight.models.baselines import CopyLastConfig, CopyLastFrame
        return CopyLastFrame(CopyLastConfig(image_size=image_size, action_dim=4))
    if name == "conv":
        from foresight.models.baselines import ConvPredictorConfig
        return foresight.get_model_class("conv")(preset(ConvPredictorConfig, "quick"))
    cls = foresight.get_model_class(name)
    cfg = preset(cls.config_class, "quick")
    model = cls(cfg)
    # A fresh model is in its first training stage (GHVAE: module1, depth 1); a trained one predicts in its last
    # (GHVAE: all K modules), and that is the model a planner runs.
    return model.set_stage(model.stages[-1])


def bench_latency(models: list[str], samples: int, iterations: int, horizon: int, measure_samples: int,
                  repeats: int, cost: str) -> list[dict]:
    rows = []
    low, high = -np.ones(4, np.float32), np.ones(4, np.float32)
    rng = np.random.default_rng(0)
    for name in models:
        n = measure_samples or samples
        env = None
        if name == "simulator":
            from envs.metaworld import make_env
            from envs.sim_model import SimulatorWorldModel
            env = make_env("push-v3", image_size=64, variation_seed=0)
            obs, _ = env.reset()
            model = SimulatorWorldModel.for_env(env, render_steps="final")
            model.sync(env)
            image = obs["image"]
        else:
            model = _model(name).eval()
            image = rng.integers(0, 256, (model.image_size, model.image_size, 3), dtype=np.uint8)
        costs = [cost]
        if name != "simulator" and getattr(model, "supports_embeddings", False) and cost == "pixel":
            costs.append("embedding")
        for c in costs:
            agent = VisualMPC(model, CEM(num_samples=n, iterations=iterations), horizon=horizon, action_low=low,
                              action_high=high, cost=c, record=False, seed=0)
            goal = rng.integers(0, 256, image.shape, dtype=np.uint8)
            times = []
            for r in range(repeats + 1):
                agent.reset(goal)
                t0 = time.perf_counter()
                agent.act({"image": image})
                if r > 0 or repeats == 0:  # the first call warms up (allocations, lazy imports)
                    times.append(time.perf_counter() - t0)
            sec = float(np.median(times))
            row = {"model": name, "cost": c, "samples": n, "iterations": iterations, "horizon": horizon,
                   "seconds_per_action": sec, "ms_per_candidate": 1e3 * sec / (n * iterations),
                   "params": int(sum(p.numel() for p in model.parameters())) if name != "simulator" else 0}
            if n != samples:
                row["extrapolated_seconds_per_action_at_%d_samples" % samples] = sec * samples / n
            rows.append(row)
            print(json.dumps(row), flush=True)
        if env is not None:
            env.close()
    return rows


BENCHMARKS = ("optimizers", "latency")


@dataclass
class BenchPlannersConfig:
    """Planner benchmarks."""

    what: str = ""            # which benchmark: optimizers (optimiser convergence) | latency (planning latency)
    models: tuple[str, ...] = ("copy_last", "conv", "harp", "ghvae", "simulator")  # models of the latency benchmark
    samples: int = 200        # candidate plans per iteration
    iterations: int = 3       # optimiser iterations per plan
    horizon: int = 10         # planned / predicted frames
    measure_samples: int = 0  # measure with this population, extrapolate linearly to samples (0 = measure samples)
    repeats: int = 2          # repetitions of each measurement
    cost: str = "pixel"       # planning cost: pixel | lpips | embedding
    threads: int = 1          # torch CPU threads
    out: str = ""             # write the rows as JSON here


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):  # `bench_planners.py latency --models ...`
        argv = [f"what={argv[0]}", *argv[1:]]
    cfg = build_config(BenchPlannersConfig, argv)
    if cfg.what not in BENCHMARKS:
        got = f", got {cfg.what!r}" if cfg.what else " (required)"
        raise UsageError(f"what: expected one of {', '.join(BENCHMARKS)} (e.g. `bench_planners.py optimizers`){got}")
    torch.set_num_threads(cfg.threads)
    if cfg.what == "optimizers":
        rows = bench_optimizers(horizon=5, action_dim=2) + bench_optimizers(horizon=10, action_dim=4)
        for r in rows:
            print(json.dumps(r))
    else:
        rows = bench_latency(list(cfg.models), cfg.samples, cfg.iterations, cfg.horizon, cfg.measure_samples,
                             cfg.repeats, cfg.cost)
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    cli_main(main, BenchPlannersConfig, __doc__)
