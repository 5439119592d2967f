"""Plan toward goal images in Meta-World with any world model (a checkpoint, a baseline or the simulator).

For every (task, variation) the goal image is the scripted expert's first successful frame (`envs.goals`);
the agent starts from the variation's initial state and acts for ``max_steps`` steps. Writes, under
``{out}/{name}/``: ``eval_info.json`` (per-episode rows and aggregates: success, final distance to the goal),
``config.yaml`` and ``videos/{task}__v{variation}.mp4`` (real | imagined | goal, side by side).

    python experiments/plan_to_goal.py model=simulator planner=cem num_samples=40 iterations=2
    python experiments/plan_to_goal.py --config experiments/configs/plan_to_goal_sim.yaml agent=random
    python experiments/plan_to_goal.py model=runs/harp/metaworld/checkpoints/last cost=embedding

Success is Meta-World's ``info['success']`` at any step (its convention) and at the last step; distances are
the summed squared pixel error to the goal image and the L2 distance of hand + object position to the goal state.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.mpc import GripperHeuristic, RandomActionAgent, VisualMPC, run_episode
from agents.optimizers import make_optimizer
from foresight.checkpoint import atomic_write_bytes
from foresight.config import build_config, dump_yaml, to_dict

TASKS5 = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "door-open-v3", "push-v3")


@dataclass
class PlanToGoalConfig:
    """Planning toward goal images."""

    tasks: tuple[str, ...] = TASKS5        # Meta-World v3 task names
    variations: tuple[int, ...] = (0,)     # variation seeds: one episode (and goal image) each
    agent: str = "mpc"                     # "mpc" (plan with the model) or "random" (uniform random actions)
    model: str = "simulator"               # "simulator", "copy_last", or a world-model checkpoint directory
    planner: str = "cem"                   # random | cem | icem | mppi
    num_samples: int = 200                 # candidate plans per iteration
    iterations: int = 3                    # optimiser iterations per plan
    elite_frac: float = 0.05               # CEM / iCEM elites (at least min_elites)
    min_elites: int = 10
    init_std: float = 0.5                  # initial sampling std of the actions (bounds are [-1, 1])
    smoothing: float = 0.0                 # AR(1) correlation of the sampling noise (benchmark practice: 0.5)
    full_covariance: bool = False          # CEM full-covariance refit
    temperature: float = 0.5               # MPPI temperature (costs normalised by their std)
    horizon: int = 10                      # planned steps
    action_repeat: int = 1                 # hold each distinct action this many steps
    replan_every: int = 1                  # executed actions per plan
    cost: str = "pixel"                    # pixel | lpips | embedding
    cost_weighting: str = "final"          # final | all | linear
    num_model_samples: int = 1             # futures per candidate (stochastic models)
    predict_batch_size: int = 0            # candidates per model call (0 = all)
    gripper: bool = False                  # script the gripper (close below gripper_z) instead of planning it
    gripper_z: float = 0.08
    max_steps: int = 50                    # control steps per episode
    image_size: int = 64
    seed: int = 0
    videos: bool = True                    # write real-vs-imagined videos
    out: str = "runs/plan_to_goal"
    name: str = ""                         # run directory name (default: {model}__{agent/planner}__{seed}__{time})
    device: str = "auto"                   # model device: auto | cpu | cuda
    threads: int = 1                       # torch CPU threads


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """frames uint8 [T, H, W, 3] -> mp4, written atomically."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def real_vs_imagined(episode: dict[str, Any], goal: np.ndarray) -> np.ndarray:
    """Panels [real frame t+1 | the model's imagined frame t+1 from the latest plan | goal], uint8 [T, H, 3W, 3].

    Imagined frames come from the plan active at step t (made at step p <= t, index t - p); black when the
    agent recorded none (random agent) or the plan was shorter.
    """
    real = episode["frames"][1:]  # [T, H, W, 3]
    t_total = real.shape[0]
    imagined = np.zeros_like(real)
    records = sorted(episode["records"], key=lambda r: r.step)
    for r in records:
        if r.imagined is None:
            continue
        for k in range(r.imagined.shape[0]):
            t = r.step + k
            if t < t_total:
                img = r.imagined[k]
                if img.shape != real.shape[1:]:
                    img = _resize_uint8(img, real.shape[1])
                imagined[t] = img
    goal_panel = np.broadcast_to(goal, real.shape)
    return np.concatenate([real, imagined, goal_panel], axis=2)


def _resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def _state_distance(state: np.ndarray, goal_state: np.ndarray) -> float:
    # hand xyz (0:3) and first object position (4:7) of Meta-World's 39-d observation
    idx = np.r_[0:3, 4:7]
    return float(np.linalg.norm(np.asarray(state)[idx] - np.asarray(goal_state)[idx]))


def _pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float32) / 255 - b.astype(np.float32) / 255) ** 2).sum())


def _load_model(cfg: PlanToGoalConfig, device: torch.device) -> Any:
    if cfg.model == "simulator":
        return None  # built per episode (it needs the episode's env)
    if cfg.model == "copy_last":
        from foresight.models.baselines import CopyLastConfig, CopyLastFrame
        return CopyLastFrame(CopyLastConfig(image_size=cfg.image_size, action_dim=4, context_frames=1)).eval()
    import foresight
    model = foresight.load(cfg.model, map_location=device)
    if model.action_dim != 4:
        raise ValueError(f"{cfg.model}: the model has action_dim={model.action_dim}; Meta-World actions are 4-D")
    return model


def _build_agent(cfg: PlanToGoalConfig, model: Any, env: Any, record_model: Any = None,
                 before_plan: Any = None) -> Any:
    low, high = env.action_space.low, env.action_space.high
    if cfg.agent == "random":
        return RandomActionAgent(action_low=low, action_high=high, seed=cfg.seed)
    if cfg.agent != "mpc":
        raise ValueError(f"agent must be 'mpc' or 'random', got {cfg.agent!r}")
    kw: dict[str, Any] = {"num_samples": cfg.num_samples, "iterations": cfg.iterations, "init_std": cfg.init_std,
                          "smoothing": cfg.smoothing}
    if cfg.planner in ("cem", "icem"):
        kw.update(elite_frac=cfg.elite_frac, min_elites=cfg.min_elites, full_covariance=cfg.full_covariance)
    elif cfg.planner == "mppi":
        kw.update(temperature=cfg.temperature)
    optimizer = make_optimizer(cfg.planner, **kw)
    gripper = GripperHeuristic(z_threshold=cfg.gripper_z) if cfg.gripper else None
    return VisualMPC(model, optimizer, horizon=cfg.horizon, action_low=low, action_high=high, cost=cfg.cost,
                     cost_weighting=cfg.cost_weighting, action_repeat=cfg.action_repeat,
                     replan_every=cfg.replan_every, num_model_samples=cfg.num_model_samples, gripper=gripper,
                     record=cfg.videos, record_model=record_model,
                     predict_batch_size=cfg.predict_batch_size or None, before_plan=before_plan, seed=cfg.seed)


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("success", "success_final", "final_pixel_distance", "initial_pixel_distance", "final_state_distance",
            "initial_state_distance", "plan_seconds_mean", "seconds")
    agg = {k: float(np.mean([r[k] for r in rows])) for k in keys if rows and all(r.get(k) is not None for r in rows)}
    agg["episodes"] = len(rows)
    return agg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = build_config(PlanToGoalConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(max(cfg.threads, 1))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    from envs.goals import make_goal
    from envs.metaworld import make_env
    from tqdm import tqdm

    what = "random" if cfg.agent == "random" else cfg.planner
    model_tag = Path(cfg.model).name if cfg.model not in ("simulator", "copy_last") else cfg.model
    name = cfg.name or f"{model_tag}__{what}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())
    learned = _load_model(cfg, device) if cfg.agent == "mpc" else None

    rows = []
    episodes = [(t, v) for t in cfg.tasks for v in cfg.variations]
    for task, variation in tqdm(episodes, desc=f"plan_to_goal[{name}]"):
        env = make_env(task, image_size=cfg.image_size, variation_seed=variation, max_steps=500)
        goal = make_goal(task, variation, image_size=cfg.image_size, env=env)
        model, record_model, before_plan = learned, None, None
        if cfg.agent == "mpc" and cfg.model == "simulator":
            from envs.sim_model import SimulatorWorldModel
            render = "final" if cfg.cost_weighting == "final" else "all"
            model = SimulatorWorldModel.for_env(env, render_steps=render, future_frames=cfg.horizon)
            record_model = model.view(render_steps="all")
            before_plan = (lambda m=model, e=env: m.sync(e))
        agent = _build_agent(cfg, model, env, record_model, before_plan)
        ep = run_episode(env, agent, goal.image, max_steps=cfg.max_steps)
        final_state = env.get_sim_state()["state_obs"]
        plans = ep["records"]
        row = {
            "task": task, "variation": int(variation), "steps": int(len(ep["actions"])),
            "success": float(ep["success"].max()) if len(ep["success"]) else 0.0,
            "success_final": float(ep["success"][-1]) if len(ep["success"]) else 0.0,
            "first_success_step": int(np.argmax(ep["success"]) + 1) if ep["success"].any() else None,
            "initial_pixel_distance": _pixel_distance(ep["frames"][0], goal.image),
            "final_pixel_distance": _pixel_distance(ep["frames"][-1], goal.image),
            "initial_state_distance": None, "final_state_distance": _state_distance(final_state, goal.state),
            "expert_steps_to_goal": int(goal.step),
            "plans": len(plans),
            "plan_seconds_mean": float(np.mean([p.seconds for p in plans])) if plans else 0.0,
            "evaluations_per_plan": float(np.mean([p.evaluations for p in plans])) if plans else 0.0,
            "seconds": float(ep["seconds"]),
        }
        env.reset()
        row["initial_state_distance"] = _state_distance(env.get_sim_state()["state_obs"], goal.state)
        rows.append(row)
        if cfg.videos:
            write_video(run_dir / "videos" / f"{task}__v{variation}.mp4", real_vs_imagined(ep, goal.image))
        env.close()
        info = {"config": to_dict(cfg), "per_episode": rows, "aggregated": {
            "overall": _aggregate(rows),
            "per_task": {t: _aggregate([r for r in rows if r["task"] == t]) for t in dict.fromkeys(r["task"] for r in rows)},
        }}
        atomic_write_bytes(run_dir / "eval_info.json", (json.dumps(info, indent=2) + "\n").encode())  # after every episode
    print(json.dumps(info["aggregated"]["overall"], indent=2))
    print(f"wrote {run_dir / 'eval_info.json'}")
    return info


if __name__ == "__main__":
    main()
