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

RoboNet (``robonet_dir=FOLDER [robonet_split=LIST.txt]``): instead of Meta-World tasks, every selected recorded
trajectory is replayed (`envs.robonet_replay.RoboNetReplayEnv`) with its final frame as the goal. The agent re-plans
at every recorded step from the last C recorded frames (`VisualMPC.plan_from`, the same objective and costs as above)
and each executed action is compared with the one the robot recorded; the first plan is also scored against the
recorded actions and frames (`score_plan`). Writes ``eval_info.json`` (per-file rows, means overall and per robot)
and ``strips/{file}.png`` (recorded | imagined by the first plan | goal).

    python experiments/plan_to_goal.py robonet_dir=data/robonet/hdf5 robonet_split=test_256.txt model=copy_last
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.mpc import GripperHeuristic, RandomActionAgent, VisualMPC, resize_frames, run_episode
from agents.optimizers import make_optimizer
from foresight.checkpoint import atomic_write_bytes, atomic_write_json
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
    # RoboNet replay (used instead of tasks / variations when robonet_dir is set; max_steps caps the steps)
    robonet_dir: str = ""                  # a folder of RoboNet .hdf5 files
    robonet_split: str = ""                # file listing the files to use (one name a line); empty: every file
    robonet_robots: tuple[str, ...] = ()   # keep only these robots (empty: all)
    robonet_camera: int = 0                # camera stream observed
    robonet_files: int = 0                 # use at most this many files, in index / list order (0: all)
    robonet_adim: int = 0                  # harmonised action width, 4 or 5 (0: the model's; 4 without a model)
    robonet_action_bound: float = 0.0      # action box [-b, b] per dim (0: per-dim max |recorded action| of the files)


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


def _load_model(cfg: PlanToGoalConfig, device: torch.device, action_dim: int | None = 4) -> Any:
    """The planning model; ``action_dim`` is the width the data needs (None: take the checkpoint's)."""
    if cfg.model == "simulator":
        return None  # built per episode (it needs the episode's env)
    if cfg.model == "copy_last":
        from foresight.models.baselines import CopyLastConfig, CopyLastFrame
        return CopyLastFrame(CopyLastConfig(image_size=cfg.image_size, action_dim=action_dim or 4,
                                            context_frames=1)).eval()
    import foresight
    model = foresight.load(cfg.model, map_location=device)
    if action_dim is not None and model.action_dim != action_dim:
        data = "RoboNet actions (robonet_adim)" if cfg.robonet_dir else "Meta-World actions"
        raise ValueError(f"{cfg.model}: the model has action_dim={model.action_dim}; {data} are {action_dim}-D")
    return model


def _build_agent(cfg: PlanToGoalConfig, model: Any, env: Any, record_model: Any = None,
                 before_plan: Any = None, *, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                 record: bool | None = None) -> Any:
    """The agent; action bounds from ``env.action_space`` or ``bounds`` (low [A], high [A]).

    ``init_std`` is in units of the box's half-width (the same number as an absolute std on Meta-World's [-1, 1]).
    """
    low, high = bounds if bounds is not None else (env.action_space.low, env.action_space.high)
    if cfg.agent == "random":
        return RandomActionAgent(action_low=low, action_high=high, seed=cfg.seed)
    if cfg.agent != "mpc":
        raise ValueError(f"agent must be 'mpc' or 'random', got {cfg.agent!r}")
    half = torch.as_tensor((np.asarray(high, np.float32) - np.asarray(low, np.float32)) / 2)
    init_std = cfg.init_std if bool((half == 1).all()) else cfg.init_std * half  # [A] when the box is not [-1, 1]
    kw: dict[str, Any] = {"num_samples": cfg.num_samples, "iterations": cfg.iterations, "init_std": init_std,
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
                     record=cfg.videos if record is None else record, record_model=record_model,
                     predict_batch_size=cfg.predict_batch_size or None, before_plan=before_plan, seed=cfg.seed)


METAWORLD_KEYS = ("success", "success_final", "final_pixel_distance", "initial_pixel_distance",
                  "final_state_distance", "initial_state_distance", "plan_seconds_mean", "seconds")


def _aggregate(rows: list[dict[str, Any]], keys: tuple[str, ...] = METAWORLD_KEYS) -> dict[str, Any]:
    agg = {k: float(np.mean([r[k] for r in rows])) for k in keys if rows and all(r.get(k) is not None for r in rows)}
    agg["episodes"] = len(rows)
    return agg


# ---------------------------------------------------------------------------------------------------------
# RoboNet: plan toward the final frame of recorded trajectories, scored against what the robot did

ROBONET_KEYS = ("action_mse", "action_mse_xyz", "action_mse_zero", "first_action_mse", "first_action_mse_xyz",
                "first_frame_mse", "first_frame_psnr", "final_to_goal_mse", "initial_to_goal_mse",
                "plan_seconds_mean", "load_seconds", "seconds")


def _robonet_rows(cfg: PlanToGoalConfig, context_frames: int) -> list[dict[str, Any]]:
    """Index rows of the files to replay: split list, robot / camera filters, at least C + 1 frames."""
    from foresight.data.robonet import RoboNetIndex, read_split_file

    index = RoboNetIndex.build(Path(cfg.robonet_dir).expanduser(), progress=False)
    if cfg.robonet_split:
        index = index.select(read_split_file(Path(cfg.robonet_split).expanduser()))
    index = index.filter(robot=list(cfg.robonet_robots) or None, camera=cfg.robonet_camera,
                         min_steps=context_frames + 1)
    rows = list(index)[: cfg.robonet_files or None]
    if not rows:
        raise ValueError(f"no RoboNet file in {cfg.robonet_dir} to replay (split={cfg.robonet_split or 'all'}, "
                         f"robots={list(cfg.robonet_robots) or 'all'}, camera={cfg.robonet_camera}, "
                         f"at least {context_frames + 1} frames)")
    return rows


def _robonet_bounds(cfg: PlanToGoalConfig, rows: list[dict[str, Any]], adim: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric action box [A]: robonet_action_bound, or the per-dim max |recorded action| over the files
    (what a robot's action limits would give; floored at 1e-3 so that a dim never recorded still has a box)."""
    if cfg.robonet_action_bound > 0:
        high = np.full(adim, cfg.robonet_action_bound, np.float32)
    else:
        from foresight.data.robonet import harmonised_actions_of_file

        high = np.zeros(adim, np.float32)
        for r in rows:
            a = harmonised_actions_of_file(r["path"], r, target_adim=adim)  # [T-1, A], no pixels read
            if len(a):
                high = np.maximum(high, np.abs(a).max(0))
        high = np.maximum(high, 1e-3)
    return -high, high


def _agent_key(cfg: PlanToGoalConfig, horizon: int) -> int:
    """Which agent plans ``horizon`` steps: one per horizon for MPC, one random agent for every horizon."""
    return horizon if cfg.agent == "mpc" else 0


def _replay_file(cfg: PlanToGoalConfig, row: dict[str, Any], env: Any, get_agent: Any,
                 strip_path: Path | None) -> dict[str, Any]:
    """Closed-loop replay of one file; returns its eval row (and writes the strip PNG).

    ``get_agent(h)``: the agent planning h steps. Near the end of the recording the plan shrinks to the frames
    left (so a final-frame cost aims at the goal at the right time); each horizon has its own agent, whose warm
    start is shifted by the steps executed since its previous plan.
    """
    from foresight.viz import save_strip

    t0 = time.perf_counter()
    last_step: dict[int, int] = {}  # horizon -> step of that agent's previous plan in this file
    executed, recorded, plan_seconds, first = [], [], [], {}

    def plan_fn(context: torch.Tensor, goal: torch.Tensor, h: int) -> torch.Tensor:
        step = env.t - (env.context_frames - 1)
        key = _agent_key(cfg, h)
        agent = get_agent(h)
        if key not in last_step:  # first use in this file: new goal, no warm start from another file
            agent.reset(goal[0])
        p0 = time.perf_counter()
        if cfg.agent == "random":
            actions, imagined = torch.from_numpy(np.stack([agent.act(None) for _ in range(h)])), None
        else:
            actions, imagined = agent.plan_from(context, goal, executed=step - last_step.get(key, 0), imagine=not first)
        plan_seconds.append(time.perf_counter() - p0)
        last_step[key] = step
        if not first:  # the first plan, from frame C-1: score it whole against the recording
            if imagined is not None:
                imagined = resize_frames(imagined, env.frames.shape[1])  # [h, 3, H, W]
            first.update(env.score_plan(actions, predicted_frames=imagined), imagined=imagined, plan=actions)
        executed.append(actions[0].numpy())
        recorded.append(env.actions[env.t])
        return actions

    res = env.run_closed_loop(plan_fn, horizon=cfg.horizon)
    seconds = time.perf_counter() - t0
    err = np.stack(executed) - np.stack(recorded)  # [steps, A]
    rec = np.stack(recorded)
    goal = env.goal_image()  # [1, 3, H, W]
    start = env.frames_tensor(env.context_frames - 1, env.context_frames)[:, 0]  # [1, 3, H, W]
    out = {
        "file": row["file"], "robot": row.get("robot"), "recorded_adim": row.get("adim"),
        "frames": env.num_steps, "steps": int(res["steps"]),
        "action_mse": float(res["action_mse"]), "action_mse_xyz": float((err[:, :3] ** 2).mean()),
        "action_mse_zero": float((rec ** 2).mean()),  # the all-zero plan: the floor a planner must beat
        "first_action_mse": first["action_mse"], "first_action_mse_xyz": first["action_mse_xyz"],
        "first_frame_mse": first.get("frame_mse"), "first_frame_psnr": first.get("frame_psnr"),
        "final_to_goal_mse": first.get("final_to_goal_mse"),
        "initial_to_goal_mse": float((start - goal).pow(2).mean()),
        "plans": len(plan_seconds), "plan_seconds_mean": float(np.mean(plan_seconds)), "replay_seconds": seconds,
    }
    if strip_path is not None:
        h = first["plan"].shape[0]
        c = env.context_frames - 1
        rows = [env.frames_tensor(c, c + h + 1)[0]]  # recorded: last context frame, then the next h frames
        if first["imagined"] is not None:
            rows.append(torch.cat([rows[0][:1], first["imagined"]]))  # imagined by the first plan
        rows.append(goal)
        save_strip(strip_path, rows)
    return out


def run_robonet(cfg: PlanToGoalConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    """The RoboNet mode of `main` (``robonet_dir`` set)."""
    from tqdm import tqdm

    from envs.robonet_replay import RoboNetReplayEnv

    if cfg.agent not in ("mpc", "random"):
        raise ValueError(f"agent must be 'mpc' or 'random', got {cfg.agent!r}")
    if cfg.robonet_adim not in (0, 4, 5):
        raise ValueError(f"robonet_adim must be 4 or 5 (RoboNet's harmonised action widths), got {cfg.robonet_adim}")
    if cfg.gripper:
        raise ValueError("gripper=true scripts Meta-World's gripper from the hand height; it does not apply to RoboNet")
    if cfg.replan_every != 1:
        raise ValueError("RoboNet replay re-plans at every recorded step; replan_every must be 1")
    model = None
    if cfg.agent == "mpc":
        model = _load_model(cfg, device, action_dim=cfg.robonet_adim or (4 if cfg.model == "copy_last" else None))
        if model.action_dim not in (4, 5):
            raise ValueError(f"{cfg.model}: the model has action_dim={model.action_dim}; RoboNet actions are "
                             f"harmonised to 4 (x, y, z, theta) or 5 (+ gripper) dims")
    adim = model.action_dim if model is not None else (cfg.robonet_adim or 4)
    context_frames = max(model.context_frames, 1) if model is not None else 1
    rows_in = _robonet_rows(cfg, context_frames)
    low, high = _robonet_bounds(cfg, rows_in, adim)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())

    agents: dict[int, Any] = {}  # kept across files (an LPIPS cost loads its network once per agent)

    def get_agent(h: int) -> Any:
        key = _agent_key(cfg, h)
        if key not in agents:
            agents[key] = _build_agent(replace(cfg, horizon=h), model, None, bounds=(low, high), record=False)
        return agents[key]

    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for r in tqdm(rows_in, desc=f"plan_to_goal[{run_dir.name}]"):
        t0 = time.perf_counter()
        env = RoboNetReplayEnv(r["path"], camera=cfg.robonet_camera, image_size=cfg.image_size, target_adim=adim,
                               context_frames=context_frames, max_steps=context_frames + cfg.max_steps, metadata=r)
        load_seconds = time.perf_counter() - t0  # decoding + resizing the recording
        strip = run_dir / "strips" / f"{Path(r['file']).stem}.png" if cfg.videos else None
        row = _replay_file(cfg, r, env, get_agent, strip)
        rows.append({**row, "load_seconds": load_seconds, "seconds": time.perf_counter() - t0})
        robots = dict.fromkeys(x["robot"] for x in rows)
        info = {"config": to_dict(cfg), "action_dim": adim, "context_frames": context_frames,
                "action_low": low.tolist(), "action_high": high.tolist(), "per_file": rows, "aggregated": {
                    "overall": _aggregate(rows, ROBONET_KEYS),
                    "per_robot": {k: _aggregate([x for x in rows if x["robot"] == k], ROBONET_KEYS) for k in robots},
                }}
        atomic_write_json(run_dir / "eval_info.json", info)  # after every file
    print(json.dumps(info["aggregated"]["overall"], indent=2))
    print(f"wrote {run_dir / 'eval_info.json'}")
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = build_config(PlanToGoalConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(max(cfg.threads, 1))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if cfg.robonet_dir and cfg.agent == "mpc" and cfg.model == "simulator":
        raise ValueError("model=simulator cannot plan on RoboNet (a real robot's recording cannot be re-simulated); "
                         "use model=copy_last or a world-model checkpoint")
    from tqdm import tqdm

    what = "random" if cfg.agent == "random" else cfg.planner
    model_tag = Path(cfg.model).name if cfg.model not in ("simulator", "copy_last") else cfg.model
    if cfg.robonet_dir:
        model_tag = f"robonet__{model_tag}"
    name = cfg.name or f"{model_tag}__{what}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out) / name
    if cfg.robonet_dir:
        return run_robonet(cfg, device, run_dir)
    from envs.goals import make_goal
    from envs.metaworld import make_env

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
        atomic_write_json(run_dir / "eval_info.json", info)  # after every episode
    print(json.dumps(info["aggregated"]["overall"], indent=2))
    print(f"wrote {run_dir / 'eval_info.json'}")
    return info


if __name__ == "__main__":
    main()
