"""How a goal-image cost behaves along the scripted expert's path: is "closer to solved" also "cheaper"?

For each task and held-out goal variation, the expert is rolled out from the start to its first success (the
goal image) and every frame is scored against the goal with the pixel cost (summed squared error, optionally
blurred) and LPIPS. A cost that rises along the path (the arm first moves away from where the goal shows it)
has a local minimum a short-horizon planner cannot leave, even with a perfect model. Reports, per cost, the
cost at 12 evenly spaced points of the path (start = 1.0) and the largest rise above the running minimum.

    python benchmarks/cost_landscape.py --out docs/bench/cost_landscape.json
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

from experiments.common import cli_main, write_results
from experiments.plan_to_goal import TASKS5  # the planning benchmark's five tasks, defined once
from foresight.config import build_config


def expert_path(task: str, variation: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[T+1, 3, H, W]`` of the expert from reset to its first success, and the goal ``[3, H, W]``."""
    from envs.goals import make_goal
    from envs.metaworld import expert_policy, make_env

    env = make_env(task, image_size=image_size, variation_seed=variation, max_steps=500)
    goal = make_goal(task, variation, image_size=image_size, env=env)
    obs, _ = env.reset()
    policy = expert_policy(task)
    frames = [obs["image"]]
    for _ in range(goal.step):
        obs, *_ = env.step(policy(obs["state"]))
        frames.append(obs["image"])
    env.close()
    to = lambda x: torch.from_numpy(np.asarray(x)).movedim(-1, -3).float() / 255  # noqa: E731
    return to(np.stack(frames)), to(goal.image)


@dataclass
class CostLandscapeConfig:
    """Goal costs along the expert's path."""

    tasks: tuple[str, ...] = TASKS5                        # Meta-World task names
    variations: tuple[int, ...] = (10000, 10001, 10002)    # goal variations
    blurs: tuple[float, ...] = (0, 2, 4)                   # Gaussian sigmas (pixels) of the pixel cost
    image_size: int = 64                                   # frame size
    out: str = ""                                          # write the results here as JSON


def main(argv: list[str] | None = None) -> dict:
    cfg = build_config(CostLandscapeConfig, sys.argv[1:] if argv is None else argv)
    from agents.costs import LPIPSCost, PixelCost

    torch.set_num_threads(1)
    results: dict = {"tasks": {}, "command": "python benchmarks/cost_landscape.py " + " ".join(argv or sys.argv[1:])}
    lpips = None
    for task in cfg.tasks:
        per_var = []
        for v in cfg.variations:
            frames, goal = expert_path(task, v, cfg.image_size)
            costs = {f"pixel_blur{b:g}": PixelCost(goal, blur=float(b)) for b in cfg.blurs}
            lp = LPIPSCost(goal, lpips=lpips)
            lpips = lp.lpips
            costs["lpips"] = lp
            row = {"variation": v, "expert_steps": int(frames.shape[0] - 1)}
            for name, cost in costs.items():
                c = cost(frames[:, None, None]).numpy().astype(float)  # [T+1]
                rel = c / max(c[0], 1e-12)
                idx = np.linspace(0, len(c) - 1, 12).round().astype(int)
                row[name] = {"path": [round(float(x), 3) for x in rel[idx]],
                             "max_rise": round(float((rel - np.minimum.accumulate(rel)).max()), 3)}
            per_var.append(row)
            print(task, v, {k: r["max_rise"] for k, r in row.items() if isinstance(r, dict)})
        results["tasks"][task] = per_var
    return write_results(cfg.out, results)


if __name__ == "__main__":
    cli_main(main, CostLandscapeConfig, __doc__)
