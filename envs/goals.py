"""Goal images: the picture of a task variation solved, so a planner can be asked to reach exactly it.

The goal of (task, variation_seed) is the frame at the first step where the scripted expert reaches
``info['success']`` in that variation, rendered with the project's camera and render settings, together with the
state that produced it (the 39-d observation state and the full simulator state for `set_sim_state`).
Because variations and the expert are deterministic, `make_goal` gives the same pixels as the frame at
``first_success`` of the corresponding collected demo (`goal_from_episode`): tested.

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

__all__ = ["GoalImage", "make_goal", "goal_from_episode"]


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

    def as_tensor(self):
        """The image as float32 [3, H, W] in [0, 1] (library convention)."""
        import torch

        return torch.from_numpy(self.image).permute(2, 0, 1).float().div_(255.0)


def make_goal(task_name: str, variation_seed: int, *, image_size: int = 64,
              camera: CameraConfig | str = DEFAULT_CAMERA, env: MetaWorldImageEnv | None = None,
              max_steps: int = 500) -> GoalImage:
    """Run the scripted expert in (task, variation) until success and return that frame and state.

    Pass ``env`` to reuse an existing env of the same task (its variation is changed and the env is left at
    the goal state). Raises RuntimeError if the expert does not succeed within ``max_steps``.
    """
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
        for t in range(1, env.max_steps + 1):
            obs, _, _, truncated, info = env.step(policy(obs["state"]))
            if info["success"]:
                return GoalImage(task=task_name, variation_seed=int(variation_seed), image=obs["image"],
                                 state=obs["state"], step=t, sim_state=env.get_sim_state())
            if truncated:
                break
        raise RuntimeError(f"scripted expert did not solve {task_name} variation {variation_seed} "
                           f"within {env.max_steps} steps: no goal image")
    finally:
        if own:
            env.close()


def goal_from_episode(episode: dict[str, Any]) -> GoalImage:
    """The goal of a stored demo (an `EpisodeDataset` item): its frame at the first success."""
    success = np.asarray(episode["success"], dtype=bool)
    if not success.any():
        raise ValueError(f"episode {episode.get('task')}/{episode.get('variation')} never succeeds")
    t = int(np.argmax(success))
    return GoalImage(task=str(episode.get("task", "")), variation_seed=int(episode.get("variation", -1)),
                     image=np.asarray(episode["frames"][t]), state=np.asarray(episode["states"][t], np.float64),
                     step=t)
