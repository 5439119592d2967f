"""Goal images: the picture of a task variation solved, so a planner can be asked to reach exactly it.

The goal of (task, variation_seed) is a frame of the scripted expert solving that variation, rendered with the
project's camera and render settings, together with the state that produced it (the 39-d observation state and
the full simulator state for `set_sim_state`).

* ``settle_steps=0``: the frame at the expert's first ``info['success']``. Because variations and the expert are
  deterministic, this is the frame at ``first_success`` of the corresponding collected demo
  (`goal_from_episode`): tested. That frame lies on the edge of the success region (reach: 0.0485-0.0498 m from
  the target against a 0.05 m radius, `benchmarks/goal_margin.py`), so an agent that reproduces the picture
  exactly succeeds only by landing on the right side of a threshold a few millimetres wide.
* ``settle_steps=K`` (the planning benchmark uses 40): the expert runs up to K steps past its first success and
  the goal is the successful frame deepest inside the success region: the smallest Meta-World
  ``info['obj_to_target']`` (reach: hand to target; object tasks: object to target), the earliest on ties. Where
  that distance does not vary over the successful frames (door-open reports 0), the goal is the middle frame of
  the first run of successful steps.
* ``subgoals=K``: also K intermediate frames of the same expert run, evenly spaced in time between its start and
  the goal frame (steps round(i * goal.step / (K + 1)), i = 1..K), for planners that follow a sequence of images
  toward a far goal (`agents.mpc.SubgoalSchedule`). They show one way there (the expert's), not the only one.

    goal = make_goal("door-open-v3", variation_seed=9)       # goal.image uint8 [64, 64, 3]
    env = make_env("door-open-v3", variation_seed=9); obs, _ = env.reset()
    # ... plan from obs['image'] toward goal.image; success is env info['success'] ...
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.metaworld import DEFAULT_CAMERA, CameraConfig, MetaWorldImageEnv, expert_policy, make_env

__all__ = ["GoalImage", "make_goal", "goal_from_episode", "subgoal_steps"]


@dataclass
class GoalImage:
    """A solved frame of one task variation.

    image: uint8 [H, W, 3]; state: float64 [39] observation state; sim_state: `get_sim_state()` dict (None when
    taken from a stored episode); step: index of the frame in the expert episode (number of actions taken).
    """

    task: str
    variation_seed: int
    image: np.ndarray
    state: np.ndarray
    step: int
    sim_state: dict[str, Any] | None = None
    first_success: int | None = None
    success_distance: float | None = None
    subgoals: list[np.ndarray] | None = None       # uint8 [H, W, 3] each, in the order to visit them
    subgoal_steps: list[int] | None = None         # the expert step of each subgoal frame
    subgoal_states: list[np.ndarray] | None = None  # their 39-d observation states

    def as_tensor(self):
        """The image as float32 [3, H, W] in [0, 1] (library convention)."""
        import torch

        return torch.from_numpy(self.image).permute(2, 0, 1).float().div_(255.0)


def make_goal(task_name: str, variation_seed: int, *, image_size: int = 64,
              camera: CameraConfig | str = DEFAULT_CAMERA, env: MetaWorldImageEnv | None = None,
              max_steps: int = 500, settle_steps: int = 0, subgoals: int = 0) -> GoalImage:
    """Run the scripted expert in (task, variation) until success (and ``settle_steps`` on); return the goal.

    See the module docstring for which frame is the goal. Pass ``env`` to reuse an existing env of the same task
    (its variation is changed and the env is left at the state where the expert stopped). ``subgoals``: how many
    intermediate frames of the expert run to return with it (module docstring). Raises RuntimeError if the expert
    does not succeed within ``max_steps``.
    """
    if settle_steps < 0:
        raise ValueError(f"settle_steps must be >= 0, got {settle_steps}")
    if subgoals < 0:
        raise ValueError(f"subgoals must be >= 0, got {subgoals}")
    own = env is None
    if env is None:
        env = make_env(task_name, image_size=image_size, camera=camera, variation_seed=variation_seed,
                       max_steps=max_steps)
    elif env.task_name != task_name:
        raise ValueError(f"env is for {env.task_name!r}, goal requested for {task_name!r}")
    try:
        env.set_variation(variation_seed)
        policy = expert_policy(task_name)
        obs, _ = env.reset()
        first, candidates = None, []   # (step, distance, image, state, sim_state) of successful frames
        path = [(obs["image"], obs["state"])]  # every frame of the run (index = step), for the subgoals
        for t in range(1, env.max_steps + 1):
            obs, _, _, truncated, info = env.step(policy(obs["state"]))
            if subgoals:
                path.append((obs["image"], obs["state"]))
            if info["success"]:
                first = t if first is None else first
                dist = info.get("obj_to_target")
                candidates.append((t, None if dist is None else float(dist), obs["image"], obs["state"],
                                   env.get_sim_state()))
            if (first is not None and t >= first + settle_steps) or truncated:
                break
        if first is None:
            raise RuntimeError(f"scripted expert did not solve {task_name} variation {variation_seed} "
                               f"within {env.max_steps} steps: no goal image")
        t, dist, image, state, sim_state = candidates[_settled_index(candidates)]
        goal = GoalImage(task=task_name, variation_seed=int(variation_seed), image=image, state=state, step=t,
                         sim_state=sim_state, first_success=first, success_distance=dist)
        if subgoals:
            steps = subgoal_steps(t, subgoals)
            goal.subgoal_steps = steps
            goal.subgoals = [path[k][0] for k in steps]
            goal.subgoal_states = [path[k][1] for k in steps]
        return goal
    finally:
        if own:
            env.close()


def subgoal_steps(goal_step: int, count: int) -> list[int]:
    """Expert steps of ``count`` subgoals evenly spaced in (0, goal_step): round(i * goal_step / (count + 1)),
    distinct and strictly between the start and the goal (fewer when the run is too short)."""
    steps = [round(i * goal_step / (count + 1)) for i in range(1, count + 1)]
    return sorted({k for k in steps if 0 < k < goal_step})


def _settled_index(candidates: list[tuple]) -> int:
    """Index of the goal among the successful frames: smallest distance (earliest on ties), else the middle of
    the first run of consecutive successful steps when the distance is missing or constant."""
    dists = [c[1] for c in candidates]
    if all(d is not None for d in dists) and max(dists) > min(dists):
        return int(np.argmin(dists))
    run = 1
    while run < len(candidates) and candidates[run][0] == candidates[run - 1][0] + 1:
        run += 1
    return (run - 1) // 2


def goal_from_episode(episode: dict[str, Any]) -> GoalImage:
    """The goal of a stored demo (an `EpisodeDataset` item): its frame at the first success."""
    success = np.asarray(episode["success"], dtype=bool)
    if not success.any():
        raise ValueError(f"episode {episode.get('task')}/{episode.get('variation')} never succeeds")
    t = int(np.argmax(success))
    return GoalImage(task=str(episode.get("task", "")), variation_seed=int(episode.get("variation", -1)),
                     image=np.asarray(episode["frames"][t]), state=np.asarray(episode["states"][t], np.float64),
                     step=t)
