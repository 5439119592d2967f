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
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

from agents.mpc import GripperHeuristic, RandomActionAgent, SubgoalSchedule, VisualMPC, resize_frames, run_episode
from agents.optimizers import make_optimizer
from foresight.checkpoint import atomic_path, atomic_write_bytes, atomic_write_json
from experiments.common import UsageError, cli_main
from foresight.config import build_config, dump_yaml, to_dict
from foresight.metrics.intervals import wilson_interval

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
    pixel_blur: float = 0.0                # Gaussian sigma (pixels) applied to both images by the pixel cost
    num_model_samples: int = 1             # futures per candidate (stochastic models)
    predict_batch_size: int = 0            # candidates per model call (0 = all)
    rest_candidate: bool = False           # offer "hold still" (zero action, or the box middle) in every plan
    gripper: bool = False                  # script the gripper (close below gripper_z) instead of planning it
    gripper_z: float = 0.08                # metres (1.0: always closed, since Meta-World's hand stays below 0.35)
    gripper_z_by_task: dict[str, float] = field(default_factory=dict)  # per-task gripper_z, e.g. {push-v3: 0.08}
    max_steps: int = 50                    # control steps per episode
    stop_on_success: bool = False          # end an episode at its first success (success rate unchanged; the
                                           # final distances are then those of that step; saves compute)
    goal_settle_steps: int = 40            # goal = the expert's frame deepest in success within this many steps
                                           # of its first success (0: the first successful frame; envs/goals.py)
    subgoals: int = 0                      # also give the planner this many frames of the expert's way to the goal,
                                           # evenly spaced in time, to reach one after the other (0: the goal only)
    subgoal_max_steps: int = 0             # steps at most per subgoal (0: max_steps // (subgoals + 1))
    subgoal_advance: float = 0.2           # move on when the frame's cost to the subgoal fell to this fraction
    subgoal_expert_pace: bool = False      # and not before the step at which the expert's run showed the subgoal
    image_size: int = 64
    seed: int = 0
    videos: bool = True                    # write real-vs-imagined videos
    out: str = "runs/plan_to_goal"
    name: str = ""                         # run directory name (default: {model}__{agent/planner}__{seed}__{time})
    device: str = "auto"                   # model device: auto | cpu | cuda
    threads: int = 1                       # torch CPU threads per process
    workers: int = 1                       # episodes run in parallel processes (each loads its own model)
    control_check: bool = False            # per task, on the first variation: cost ranking + motion check
    control_plans: int = 100               # random plans ranked by the control check
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

    with atomic_path(path) as tmp:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)


def real_vs_imagined(episode: dict[str, Any], goal: np.ndarray) -> np.ndarray:
    """Panels [real frame t+1 | the model's imagined frame t+1 from the latest plan | goal], uint8 [T, H, 3W, 3].

    Imagined frames come from the plan active at step t (made at step p <= t, index t - p); black when the
    agent recorded none (random agent) or the plan was shorter. ``goal``: one image [H, W, 3], or one per step
    [T, H, W, 3] (the goal in force at each step, when the agent follows subgoals).
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
    kw: dict[str, Any] = {"num_samples": cfg.num_samples, "iterations": cfg.iterations}
    if cfg.planner != "random":  # random shooting samples the whole box: no std, no smoothing
        kw.update(init_std=init_std, smoothing=cfg.smoothing)
    if cfg.planner in ("cem", "icem"):
        kw.update(elite_frac=cfg.elite_frac, min_elites=cfg.min_elites, full_covariance=cfg.full_covariance)
    elif cfg.planner == "mppi":
        kw.update(temperature=cfg.temperature)
    optimizer = make_optimizer(cfg.planner, **kw)
    gripper = GripperHeuristic(z_threshold=cfg.gripper_z) if cfg.gripper else None
    cost: Any = cfg.cost
    if cfg.cost == "pixel" and cfg.pixel_blur > 0:
        from agents.costs import PixelCost
        cost = (lambda goal: PixelCost(goal, weighting=cfg.cost_weighting, blur=cfg.pixel_blur))
    rest = None
    if cfg.rest_candidate:
        lo, hi = np.asarray(low, np.float32), np.asarray(high, np.float32)
        rest = np.where((lo <= 0) & (hi >= 0), 0.0, (lo + hi) / 2).astype(np.float32)  # still, where 0 is allowed
    return VisualMPC(model, optimizer, horizon=cfg.horizon, action_low=low, action_high=high, cost=cost,
                     cost_weighting=cfg.cost_weighting, action_repeat=cfg.action_repeat,
                     replan_every=cfg.replan_every, num_model_samples=cfg.num_model_samples, gripper=gripper,
                     record=cfg.videos if record is None else record, record_model=record_model,
                     predict_batch_size=cfg.predict_batch_size or None, before_plan=before_plan, rest_action=rest,
                     seed=cfg.seed)


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


def _success_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    k = sum(r["success"] for r in rows)
    lo, hi = wilson_interval(k, len(rows))
    return {"success_rate": float(k / len(rows)) if rows else 0.0, "successes": int(k), "episodes": len(rows),
            "success_ci95": [lo, hi]}


def aggregate_metaworld(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: means + success rate with its 95 % Wilson interval; overall: the same pooled over every episode,
    and ``mean_task_success``, the mean of the per-task rates (the headline number: tasks weigh the same)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    per_task = {t: {**_aggregate([r for r in rows if r["task"] == t]),
                    **_success_summary([r for r in rows if r["task"] == t])} for t in tasks}
    overall = {**_aggregate(rows), **_success_summary(rows)}
    overall["mean_task_success"] = float(np.mean([v["success_rate"] for v in per_task.values()])) if tasks else 0.0
    return {"overall": overall, "per_task": per_task}


# ---------------------------------------------------------------------------------------------------------
# Meta-World: one episode per (task, variation), optionally in worker processes

_WORKER_MODEL: dict[str, Any] = {}  # per process: the learned model, loaded once


def _episode_strip(path: Path, episode: dict[str, Any], goal: np.ndarray, columns: int = 8) -> None:
    """PNG rows [real frame t+1 | imagined frame t+1 (the scored sample of the plan in force) | goal (the one in
    force, with subgoals)] at ``columns`` evenly spaced steps; ``goal`` [H, W, 3] or per step [T, H, W, 3]."""
    from foresight.viz import save_strip

    panels = real_vs_imagined(episode, goal)  # [T, H, 3W, 3]
    w = goal.shape[-2]
    idx = np.unique(np.linspace(0, len(panels) - 1, columns).round().astype(int))
    rows = [panels[idx, :, i * w:(i + 1) * w] for i in range(3)]  # 3 x [n, H, W, 3]
    save_strip(path, rows)


def _make_sim(cfg: PlanToGoalConfig, env: Any) -> tuple[Any, Any, Any]:
    from envs.sim_model import SimulatorWorldModel

    render = "final" if cfg.cost_weighting == "final" else "all"
    model = SimulatorWorldModel.for_env(env, render_steps=render, future_frames=cfg.horizon)
    return model, model.view(render_steps="all"), (lambda m=model, e=env: m.sync(e))


def run_metaworld_episode(cfg: PlanToGoalConfig, task: str, variation: int, run_dir: Path,
                          learned: Any = None) -> dict[str, Any]:
    """Plan toward the goal image of (task, variation) for ``max_steps`` steps; returns the episode's eval row and
    writes its video and strip (and the control check's numbers when ``cfg.control_check``)."""
    from envs.goals import make_goal
    from envs.metaworld import make_env

    env = make_env(task, image_size=cfg.image_size, variation_seed=variation, max_steps=500)
    goal = make_goal(task, variation, image_size=cfg.image_size, env=env, settle_steps=cfg.goal_settle_steps,
                     subgoals=cfg.subgoals)
    model, record_model, before_plan = learned, None, None
    if cfg.agent == "mpc" and cfg.model == "simulator":
        model, record_model, before_plan = _make_sim(cfg, env)
    agent = _build_agent(replace(cfg, gripper_z=cfg.gripper_z_by_task.get(task, cfg.gripper_z)), model, env,
                         record_model, before_plan)
    check = None
    if cfg.control_check and cfg.agent == "mpc" and variation == cfg.variations[0]:
        check = control_check(cfg, agent, env, goal)
    if cfg.agent == "mpc" and goal.subgoals:
        agent = SubgoalSchedule(agent, goal.subgoals, advance_fraction=cfg.subgoal_advance,
                                not_before=goal.subgoal_steps if cfg.subgoal_expert_pace else None,
                                max_steps_each=cfg.subgoal_max_steps or max(cfg.max_steps // (cfg.subgoals + 1), 1))
    ep = run_episode(env, agent, goal.image, max_steps=cfg.max_steps, stop_on_success=cfg.stop_on_success)
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
        # where the hand and the first object ended and where the goal has them (x, y, z in m), to tell a near miss
        # of the arm from one of the object
        "final_hand": np.asarray(final_state[0:3]).round(4).tolist(),
        "final_object": np.asarray(final_state[4:7]).round(4).tolist(),
        "goal_hand": np.asarray(goal.state[0:3]).round(4).tolist(),
        "goal_object": np.asarray(goal.state[4:7]).round(4).tolist(),
        "expert_steps_to_goal": int(goal.first_success),
        "goal_step": int(goal.step),
        "goal_success_distance": goal.success_distance,
        "plans": len(plans),
        "plan_seconds_mean": float(np.mean([p.seconds for p in plans])) if plans else 0.0,
        "evaluations_per_plan": float(np.mean([p.evaluations for p in plans])) if plans else 0.0,
        "seconds": float(ep["seconds"]),
    }
    if check is not None:
        row["control_check"] = check
    goal_panels = goal.image
    if isinstance(agent, SubgoalSchedule):
        row["subgoal_steps"] = goal.subgoal_steps  # the expert steps the subgoal frames were taken at
        row["subgoal_switch_steps"] = list(agent.switch_steps)  # the steps at which each subgoal was left
        row["subgoals_passed"] = len(agent.switch_steps)
        goals = np.stack([*goal.subgoals, goal.image])
        goal_panels = goals[np.searchsorted(np.asarray(agent.switch_steps, dtype=int), np.arange(len(ep["actions"])),
                                            side="right")]  # [T, H, W, 3]: the goal each action aimed at
    env.reset()
    row["initial_state_distance"] = _state_distance(env.get_sim_state()["state_obs"], goal.state)
    if cfg.videos:
        write_video(run_dir / "videos" / f"{task}__v{variation}.mp4", real_vs_imagined(ep, goal_panels))
        _episode_strip(run_dir / "strips" / f"{task}__v{variation}.png", ep, goal_panels)
    env.close()
    return row


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when the parent run goes (killed or stopped), instead of playing on
    episodes nobody will record."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_episode(cfg: PlanToGoalConfig, task: str, variation: int, run_dir: Path) -> dict[str, Any]:
    """`run_metaworld_episode` in a worker process (the model is loaded once per process)."""
    torch.set_num_threads(max(cfg.threads, 1))
    if cfg.agent == "mpc" and cfg.model != "simulator" and "model" not in _WORKER_MODEL:
        _WORKER_MODEL["model"] = _load_model(cfg, _device(cfg))
    return run_metaworld_episode(cfg, task, variation, run_dir, _WORKER_MODEL.get("model"))


def _device(cfg: PlanToGoalConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


# how and where a run is made, not what it measures: runs that differ only in these are the same run
RUN_HOW_KEYS = ("workers", "threads", "name", "out")


def run_settings(config: Any, ignore: tuple[str, ...] = RUN_HOW_KEYS) -> dict[str, Any]:
    """A run's config (a `PlanToGoalConfig` or its saved dict) as the settings that decide its results: JSON
    values, every option present (one added after the run was made counts at its default, which was the run's
    behaviour), the ``ignore`` keys dropped. Two runs measure the same thing when these are equal."""
    defaults = json.loads(json.dumps(to_dict(PlanToGoalConfig())))
    given = json.loads(json.dumps(config if isinstance(config, dict) else to_dict(config)))
    return {k: v for k, v in {**defaults, **given}.items() if k not in ignore}


def _resumable_rows(run_dir: Path, cfg: PlanToGoalConfig) -> list[dict[str, Any]]:
    """Episode rows of an earlier, killed run of the same config in ``run_dir`` (resume), else []."""
    path = run_dir / "eval_info.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    if run_settings(old.get("config", {})) != run_settings(to_dict(cfg)):
        raise UsageError(f"{run_dir} holds a run with another config; pass a new name=... or remove it")
    return list(old.get("per_episode", []))


def run_metaworld(cfg: PlanToGoalConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    """Every (task, variation) episode; resumes a killed run in ``run_dir``; ``workers`` > 1 runs episodes in
    parallel processes (one model each)."""
    from tqdm import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = _resumable_rows(run_dir, cfg)
    atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())
    done = {(r["task"], r["variation"]) for r in rows}
    episodes = [(t, int(v)) for t in cfg.tasks for v in cfg.variations if (t, int(v)) not in done]
    order = {(t, int(v)): i for i, (t, v) in enumerate((t, v) for t in cfg.tasks for v in cfg.variations)}

    def write() -> dict[str, Any]:
        rows.sort(key=lambda r: order.get((r["task"], r["variation"]), 0))
        info = {"config": to_dict(cfg), "per_episode": rows, "aggregated": aggregate_metaworld(rows)}
        checks = {r["task"]: r["control_check"] for r in rows if r.get("control_check")}
        if checks:
            info["control_check"] = checks
        atomic_write_json(run_dir / "eval_info.json", info)  # after every episode
        return info

    bar = tqdm(total=len(episodes), desc=f"plan_to_goal[{run_dir.name}]")
    if cfg.workers > 1 and len(episodes) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn"),
                                   initializer=_exit_with_parent, initargs=(os.getpid(),))
        futures = {pool.submit(_worker_episode, cfg, t, v, run_dir): (t, v) for t, v in episodes}
        try:
            for fut in as_completed(futures):
                try:
                    rows.append(fut.result())
                except Exception as e:
                    task, variation = futures[fut]
                    raise RuntimeError(f"episode {task} variation {variation} failed: {type(e).__name__}: {e} "
                                       f"({len(rows)} finished episodes are kept in {run_dir / 'eval_info.json'}; "
                                       f"rerun the same command to resume)") from e
                write()
                bar.update()
        except BaseException:
            # Stop at the first failure: the episodes not started are cancelled and only those in flight finish
            # (a plain `with` block would play every remaining episode before raising, recording none of them).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        learned = _load_model(cfg, device) if cfg.agent == "mpc" and cfg.model != "simulator" else None
        for t, v in episodes:
            rows.append(run_metaworld_episode(cfg, t, v, run_dir, learned))
            write()
            bar.update()
    bar.close()
    info = write()
    agg = info["aggregated"]
    print(json.dumps({"overall": agg["overall"],
                      "per_task": {t: {"success_rate": a["success_rate"], "success_ci95": a["success_ci95"]}
                                   for t, a in agg["per_task"].items()}}, indent=2))
    print(f"wrote {run_dir / 'eval_info.json'}")
    return info


# ---------------------------------------------------------------------------------------------------------
# Control-centric check: does the model rank plans like the real simulator, and move the way actions say?

AXES = {"+x": (0, 1.0), "-x": (0, -1.0), "+y": (1, 1.0), "-y": (1, -1.0), "+z": (2, 1.0), "-z": (2, -1.0)}


@torch.no_grad()
def control_check(cfg: PlanToGoalConfig, agent: Any, env: Any, goal: Any) -> dict[str, Any]:
    """From the episode's start state: (1) Spearman rank correlation between the planner's cost of
    ``control_plans`` random plans under the agent's model and the same cost of what the real simulator shows
    for them (for model-space costs, the model's embedding of the true frames), and (2) for a pure +-x/y/z action
    held over the horizon, the predicted motion (summed squared pixel change from the start frame to the final
    frame) vs the true motion, and whether the predicted final frame is nearest to the true final frame of the
    same direction among the six. Leaves ``env`` reset to the start."""
    from scipy.stats import spearmanr

    obs, _ = env.reset()
    model = agent.model
    sim, _, _ = _make_sim(replace(cfg, cost_weighting="all"), env)
    sim.sync(env)
    agent.reset(goal.image, obs)
    if getattr(agent, "before_plan", None) is not None:
        agent.before_plan()  # a simulator model syncs to the real env, as before every plan
    context = agent.context_tensor().to(model.device)  # [C, 3, h, w]
    h, a = cfg.horizon, env.action_space.shape[0]
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    distinct = -(-h // cfg.action_repeat)
    plans = (torch.rand(cfg.control_plans, distinct, a, generator=g) * 2 - 1).repeat_interleave(cfg.action_repeat, 1)[:, :h]
    gripper = getattr(agent, "gripper", None)
    gripper_value = None
    if gripper is not None:  # a scripted gripper: every plan holds its value at the start, as the planner's would
        gripper_value = float(gripper(obs))
        plans[..., gripper.action_index] = gripper_value
    # the objective takes the planned dims (all of them without a scripted gripper) and fills the gripper back in
    model_cost = agent.objective(context, gripper_value, cfg.seed)(plans[..., agent.planned_dims]).numpy()  # [N]

    true, final_states = [], []
    sim_ctx = torch.zeros(1, 1, 3, cfg.image_size, cfg.image_size)
    for i in range(0, len(plans), 50):
        chunk = plans[i:i + 50]
        frames = sim.predict(sim_ctx.expand(len(chunk), -1, -1, -1, -1), chunk)  # [n, 1, H, 3, S, S]
        final_states.extend(sim.last_final_states)
        frames = resize_frames(frames.flatten(0, 2), model.image_size).view(*frames.shape[:3], 3, model.image_size,
                                                                            model.image_size)
        out = model.embed(frames.to(model.device)) if agent.cost.space == "embeddings" else frames.to(model.device)
        true.append(agent.cost(out).float().cpu())
    true_cost = torch.cat(true).numpy()

    def rank_correlation(cost: np.ndarray, other: np.ndarray) -> float | None:
        """Spearman rho, or None when it is undefined (a constant cost: copy_last's plans all cost the same)."""
        rho = float(spearmanr(cost, other).statistic) if np.std(cost) > 0 else float("nan")
        return None if np.isnan(rho) else rho

    # Does the cost point at the goal at all? Rank correlation of each cost with the plan's true final distance
    # (hand + object) to the goal state: for the true frames it says whether the cost is right with a perfect
    # model, for the model's it is what the planner really optimises.
    state_dist = np.array([_state_distance(s, goal.state) for s in final_states])

    start = context[-1].cpu()  # [3, h, w]
    # The motion of the rollout the planner scores: the latent rollout's own pixels for a model-space cost.
    latent = agent.cost.space == "embeddings" and hasattr(model, "predict_embedding_frames")
    rollout_frames = model.predict_embedding_frames if latent else model.predict
    pred_final, true_final, pred_emb = [], [], []
    for axis, sign in AXES.values():
        act = torch.zeros(1, h, a)
        act[:, :, axis] = sign
        if gripper_value is not None:
            act[:, :, gripper.action_index] = gripper_value
        p = rollout_frames(context[None], act, seed=cfg.seed)[0, 0, -1].cpu()  # [3, h, w]
        t = sim.predict(sim_ctx, act)[0, 0, -1]
        pred_final.append(p), true_final.append(resize_frames(t[None], model.image_size)[0])
        if agent.cost.space == "embeddings":
            pred_emb.append(model.predict_embeddings(context[None], act, seed=cfg.seed)[0, 0, -1].cpu())
    pred_final, true_final = torch.stack(pred_final), torch.stack(true_final)  # [6, 3, h, w]
    pred_motion = (pred_final - start).pow(2).sum((1, 2, 3))
    true_motion = (true_final - start).pow(2).sum((1, 2, 3))
    nearest = torch.cdist(pred_final.flatten(1), true_final.flatten(1)).argmin(1)  # [6]
    extra: dict[str, Any] = {}
    if pred_emb:
        # The same check in the space the planner scores: the embedding's change from the start, predicted
        # (predict_embeddings) vs true (embed of the real final frames), and nearest-direction accuracy there.
        with torch.no_grad():
            e_start = model.embed(start[None].to(model.device)).cpu()[0]
            e_true = model.embed(true_final.to(model.device)).cpu()  # [6, D]
        e_pred = torch.stack(pred_emb)
        pm, tm = (e_pred - e_start).pow(2).sum(1), (e_true - e_start).pow(2).sum(1)
        eratio = (pm / tm.clamp_min(1e-12)).tolist()
        extra = {"embedding_motion": {name: {"predicted": float(x), "true": float(y), "ratio": float(r)}
                                      for name, x, y, r in zip(AXES, pm, tm, eratio)},
                 "embedding_motion_within_30pct": int(sum(abs(r - 1) <= 0.3 for r in eratio)),
                 "embedding_direction_accuracy": float((torch.cdist(e_pred, e_true).argmin(1)
                                                        == torch.arange(6)).float().mean())}
    env.reset()
    agent.reset(goal.image)
    ratio = (pred_motion / true_motion.clamp_min(1e-6)).tolist()
    return {**extra,
        "plans": int(cfg.control_plans), "cost": cfg.cost,
        "spearman": rank_correlation(model_cost, true_cost),
        "spearman_true_cost_vs_state_distance": rank_correlation(true_cost, state_dist),
        "spearman_model_cost_vs_state_distance": rank_correlation(model_cost, state_dist),
        "motion": {name: {"predicted": float(pm), "true": float(tm), "ratio": float(r)}
                   for name, pm, tm, r in zip(AXES, pred_motion, true_motion, ratio)},
        "motion_within_30pct": int(sum(abs(r - 1) <= 0.3 for r in ratio)),
        "direction_accuracy": float((nearest == torch.arange(6)).float().mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = build_config(PlanToGoalConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(max(cfg.threads, 1))
    device = _device(cfg)
    if cfg.goal_settle_steps < 0:
        raise UsageError(f"goal_settle_steps must be >= 0 (0: the expert's first successful frame), "
                         f"got {cfg.goal_settle_steps}")
    if cfg.subgoals < 0 or cfg.subgoal_max_steps < 0:
        raise UsageError(f"subgoals and subgoal_max_steps must be >= 0, got {cfg.subgoals}, {cfg.subgoal_max_steps}")
    if cfg.subgoal_expert_pace and not cfg.subgoals:
        raise UsageError("subgoal_expert_pace holds each subgoal until the expert's step for it; it needs subgoals > 0")
    if not 0 <= cfg.subgoal_advance < 1:
        raise UsageError(f"subgoal_advance must be in [0, 1) (a fraction of the cost to the subgoal), "
                         f"got {cfg.subgoal_advance}")
    if cfg.pixel_blur < 0 or (cfg.pixel_blur > 0 and cfg.cost != "pixel"):
        raise UsageError(f"pixel_blur (a Gaussian sigma >= 0) applies to cost=pixel only; got pixel_blur="
                         f"{cfg.pixel_blur} with cost={cfg.cost}")
    if cfg.gripper_z_by_task:
        from envs.metaworld import MT50_TASKS
        unknown = sorted(set(cfg.gripper_z_by_task) - set(MT50_TASKS))
        if unknown:
            raise UsageError(f"gripper_z_by_task: {unknown} are not Meta-World v3 task names (e.g. 'push-v3')")
        if not cfg.gripper:
            raise UsageError("gripper_z_by_task sets the scripted gripper's height per task; it needs gripper=true")
    if cfg.robonet_dir and cfg.subgoals:
        raise UsageError("subgoals come from Meta-World's scripted expert; a RoboNet replay has none")
    if cfg.robonet_dir and cfg.agent == "mpc" and cfg.model == "simulator":
        raise UsageError("model=simulator cannot plan on RoboNet (a real robot's recording cannot be re-simulated); "
                         "use model=copy_last or a world-model checkpoint")
    builtin = cfg.model in ("simulator", "copy_last")
    if cfg.agent == "mpc" and not builtin:
        from foresight.checkpoint import CheckpointError, resolve_checkpoint
        try:  # before any run folder, worker or environment exists
            resolve_checkpoint(cfg.model)
        except CheckpointError as e:
            raise UsageError(f"model={cfg.model}: {e} (or use model=simulator / model=copy_last)") from None
    what = "random" if cfg.agent == "random" else cfg.planner
    model_tag = cfg.model if builtin else Path(cfg.model).name
    if not builtin and Path(cfg.model).name in ("model", "last"):
        model_tag = Path(cfg.model).parent.name  # runs/x/model -> x
    if cfg.robonet_dir:
        model_tag = f"robonet__{model_tag}"
    name = cfg.name or f"{model_tag}__{what}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out) / name
    if cfg.robonet_dir:
        return run_robonet(cfg, device, run_dir)
    return run_metaworld(cfg, device, run_dir)


if __name__ == "__main__":
    cli_main(main, PlanToGoalConfig, __doc__)
