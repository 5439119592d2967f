"""gymnasium registration of the Meta-World image env: ``gymnasium.make("foresight/MetaWorld-v0", task=...)``.

    import envs  # registers the id (or: gymnasium.make("envs:foresight/MetaWorld-v0", ...) imports it)
    env = gymnasium.make("foresight/MetaWorld-v0", task="reach-v3", image_size=64)
    vec = gymnasium.make_vec("foresight/MetaWorld-v0", num_envs=4, vectorization_mode="sync", task="push-v3")
    env = gymnasium.wrappers.RecordVideo(env, "videos/")   # render_mode is always "rgb_array"; needs moviepy

The env is `envs.metaworld.make_env`'s `MetaWorldImageEnv`: observation ``{'image': uint8 [H, W, 3], 'state':
float64 [39]}``, action float32 [4] in [-1, 1], ``info['success']``; ``reset(seed=k)`` selects task variation k.
It truncates itself after ``max_steps`` (default 500), so the registration adds no TimeLimit. This module imports
only gymnasium: MuJoCo and Meta-World load at the first ``make``.
"""

from __future__ import annotations

from typing import Any

import gymnasium

__all__ = ["METAWORLD_ID", "make_metaworld_env", "register_envs"]

METAWORLD_ID = "foresight/MetaWorld-v0"


def make_metaworld_env(task: str = "reach-v3", *, image_size: int = 64, camera: Any = "default",
                       variation_seed: int = 0, max_steps: int = 500,
                       render_mode: str | None = "rgb_array") -> gymnasium.Env:
    """The gymnasium entry point of `METAWORLD_ID`: `envs.metaworld.make_env` with gymnasium's ``render_mode``."""
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode: the Meta-World image env renders only 'rgb_array', got {render_mode!r}")
    from envs.metaworld import make_env

    return make_env(task, image_size=image_size, camera=camera, variation_seed=variation_seed, max_steps=max_steps)


# gymnasium.make reads the creator's metadata to check render_mode before building the env.
make_metaworld_env.metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # type: ignore[attr-defined]


def register_envs() -> None:
    """Register `METAWORLD_ID` (idempotent: a second call leaves the registry as it is)."""
    if METAWORLD_ID in gymnasium.registry:
        return
    gymnasium.register(id=METAWORLD_ID, entry_point="envs.registration:make_metaworld_env",
                       kwargs={"task": "reach-v3", "image_size": 64}, max_episode_steps=None,
                       disable_env_checker=False)


register_envs()
