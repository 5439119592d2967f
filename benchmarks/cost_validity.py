"""Does a goal cost point at the goal? Rank correlation of candidate costs with the true distance to the goal.

From the start state of each held-out goal variation, ``--plans`` random plans (5 uniform actions held 2 steps:
the planning benchmark's horizon 10) are played in the real simulator; each plan's true final distance to the
goal state (hand + object, as in `experiments/plan_to_goal.py`) is compared with:

* costs of the **real** final frame: summed squared pixel error (optionally Gaussian-blurred), area-pooled to
  R x R (GHVAE's readout embedding), and, with ``--model``, the squared distance between the model's encodings
  h^1..h^d of the frame and of the goal image (plain, per-channel normalised, cosine) — what a model-space cost
  would optimise with a perfect model;
* with ``--model``, the same pixel costs of the model's **predicted** final frame (``predict``) and the model's
  own embedding cost (``predict_embeddings`` vs ``embed(goal)``) — what the planner really optimises.

Spearman rho per variation: 1 = the cost orders plans exactly as the distance to the goal does, <= 0 = a planner
minimising it moves away from the goal.

    python benchmarks/cost_validity.py --model runs/ghvae_readout/model --out docs/bench/cost_validity_reach.json
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import numpy as np
import torch
import torch.nn.functional as F

from experiments.common import UsageError, cli_main, write_results
from foresight.config import build_config


def _sq(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (a - b).pow(2).flatten(1).sum(1).numpy()


@dataclass
class CostValidityConfig:
    """Rank correlation of goal costs with the true distance to the goal."""

    task: str = "reach-v3"                                # Meta-World task name
    variations: tuple[int, ...] = (10000, 10001, 10002)   # goal variations
    plans: int = 100                                      # random plans per variation
    model: str = ""                                       # a saved world model (GHVAE: its encodings and embedding too)
    blurs: tuple[float, ...] = (0, 2, 4)                  # Gaussian sigmas (pixels) of the pixel cost
    pool: int = 16                                        # R of the area-pooled R x R image cost
    seed: int = 0                                         # seed of the random plans
    out: str = ""                                         # write the results here as JSON


def main(argv: list[str] | None = None) -> dict:
    cfg = build_config(CostValidityConfig, sys.argv[1:] if argv is None else argv)
    if cfg.plans < 3:
        raise UsageError(f"--plans: need at least 3 plans for a rank correlation, got {cfg.plans}")
    from scipy.stats import spearmanr

    import foresight
    from agents.costs import gaussian_blur
    from envs.goals import make_goal
    from envs.metaworld import make_env
    from envs.sim_model import SimulatorWorldModel
    from experiments.plan_to_goal import _state_distance

    torch.set_num_threads(1)
    model = None
    if cfg.model:
        if not Path(cfg.model).exists():
            raise UsageError(f"--model: {cfg.model} does not exist")
        model = foresight.load(cfg.model).eval()
    blurs = [float(b) for b in cfg.blurs]
    variations = list(cfg.variations)
    rho: dict[str, list[float]] = {}

    def add(name: str, cost: np.ndarray, dist: np.ndarray) -> None:
        r = spearmanr(cost, dist).statistic if np.std(cost) > 0 else float("nan")
        rho.setdefault(name, []).append(float(r))

    for var in variations:
        env = make_env(cfg.task, image_size=64, variation_seed=var)
        goal = make_goal(cfg.task, var, image_size=64)
        obs, _ = env.reset()
        sim = SimulatorWorldModel.for_env(env, render_steps="final")
        sim.sync(env)
        g = torch.Generator().manual_seed(cfg.seed + var)
        plans = (torch.rand(cfg.plans, 5, env.action_space.shape[0], generator=g) * 2 - 1).repeat_interleave(2, 1)
        real = sim.predict(torch.zeros(cfg.plans, 1, 3, 64, 64), plans)[:, 0, -1]  # [N, 3, 64, 64]
        dist = np.array([_state_distance(s, goal.state) for s in sim.last_final_states])
        gi = goal.as_tensor()[None]  # [1, 3, 64, 64]
        for s in blurs:
            blur = (lambda x: x) if s == 0 else (lambda x, s=s: gaussian_blur(x, s))
            add(f"real frame: pixel, blur {s:g}", _sq(blur(real), blur(gi)), dist)
        add(f"real frame: pooled {cfg.pool}x{cfg.pool}",
            _sq(F.adaptive_avg_pool2d(real, cfg.pool), F.adaptive_avg_pool2d(gi, cfg.pool)), dist)
        if model is not None:
            with torch.no_grad():
                if hasattr(model, "encode"):
                    for j, (h, hg) in enumerate(zip(model.encode(real), model.encode(gi)), start=1):
                        sd = h.std(dim=(0, 2, 3), keepdim=True) + 1e-6
                        add(f"real frame: model h{j}", _sq(h, hg), dist)
                        add(f"real frame: model h{j}, channel-normalised", _sq(h / sd, hg / sd), dist)
                        add(f"real frame: model h{j}, cosine",
                            (1 - F.cosine_similarity(h.flatten(1), hg.flatten(1))).numpy(), dist)
                ctx = torch.from_numpy(obs["image"]).permute(2, 0, 1).float().div(255)[None, None]
                ctx = ctx.expand(cfg.plans, model.context_frames, -1, -1, -1)
                pred = model.predict(ctx, plans, seed=cfg.seed)[:, 0, -1]
                for s in blurs:
                    blur = (lambda x: x) if s == 0 else (lambda x, s=s: gaussian_blur(x, s))
                    add(f"predicted frame: pixel, blur {s:g}", _sq(blur(pred), blur(gi)), dist)
                if getattr(model, "supports_embeddings", False):
                    emb = model.predict_embeddings(ctx, plans, seed=cfg.seed)[:, 0, -1]
                    add("model embedding cost (predict_embeddings vs embed(goal))", _sq(emb, model.embed(gi)), dist)
        env.close()

    width = max(len(k) for k in rho)
    for name, values in rho.items():
        print(f"{name:{width}s}  " + " ".join(f"{v:+.2f}" for v in values))
    result = {"task": cfg.task, "variations": variations, "plans": cfg.plans, "model": cfg.model or None,
              "spearman_vs_state_distance": rho}
    return write_results(cfg.out, result)


if __name__ == "__main__":
    cli_main(main, CostValidityConfig, __doc__)
