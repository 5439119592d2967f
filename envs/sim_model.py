"""The simulator as a `WorldModel`: a perfect-model upper bound for planners.

``predict`` ignores the context pixels and instead restores the real environment's MuJoCo state (given by
`SimulatorWorldModel.sync`), steps the real simulator through each candidate action sequence and renders
with the project camera. Planning with it measures the planner alone (no model error), and lets planners be
tested before a learned model exists.

    env = make_env("reach-v3", variation_seed=0); obs, _ = env.reset()
    sim = SimulatorWorldModel.for_env(env, render_steps="final")   # its own env of the same task/variation
    sim.sync(env)                                                    # before every planning step
    video = sim.predict(context, actions)                            # [N, 1, T, 3, 64, 64]

Cost of a candidate: one state restore (no render), T physics steps (~2 ms each on one CPU core) and one
software render per rendered step (~12 ms at 64x64 unloaded). ``render_steps="final"`` renders only the last
frame, which is all a final-step goal cost needs: the other T-1 output frames are copies of the next rendered
frame (documented, not hidden: use ``render_steps="all"`` for videos).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from envs.metaworld import DEFAULT_CAMERA, MetaWorldImageEnv, make_env
from foresight.registry import register_model
from foresight.world_model import WorldModel

__all__ = ["SimulatorConfig", "SimulatorWorldModel"]



@dataclass
class SimulatorConfig:
    """Config of the simulator world model (nothing is trained)."""

    task: str = "reach-v3"
    variation_seed: int = 0
    image_size: int = 64
    action_dim: int = 4
    context_frames: int = 1
    future_frames: int = 10
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"image_size": 32}, "quick": {}, "paper": {}}


@register_model("simulator")
class SimulatorWorldModel(WorldModel):
    """Predicts by cloning the MuJoCo state, stepping the real simulator and rendering.

    Deterministic: the S samples are identical. Needs `sync` (a `get_sim_state` dict or the env) before
    ``predict``; the context frames only fix the batch size. 

    Args:
        render_steps: "all", "final" or a list of step indices to render (others copy the next rendered one).
        env: reuse an existing `MetaWorldImageEnv` of the same task (default: build one; never the real env).
    """

    config_class = SimulatorConfig

    def __init__(self, config: SimulatorConfig, *, render_steps: str | Sequence[int] = "all",
                 env: MetaWorldImageEnv | None = None):
        super().__init__(config)
        self.env = env if env is not None else make_env(config.task, image_size=config.image_size,
                                                        camera=DEFAULT_CAMERA, variation_seed=config.variation_seed)
        if self.env.task_name != config.task or self.env.image_size != config.image_size:
            raise ValueError(f"env is ({self.env.task_name}, {self.env.image_size} px), config says "
                             f"({config.task}, {config.image_size} px)")
        self.render_steps = render_steps
        self._synced: dict[str, Any] = {"state": None}  # shared with `view`s of this model
        self.num_rendered = 0        # frames rendered so far (for benchmarks)
        self.num_physics_steps = 0

    @classmethod
    def for_env(cls, env: MetaWorldImageEnv, *, render_steps: str | Sequence[int] = "all",
                future_frames: int = 10) -> "SimulatorWorldModel":
        """A simulator model with its own env of ``env``'s task, variation and image size."""
        cfg = SimulatorConfig(task=env.task_name, variation_seed=int(env.variation_seed), image_size=env.image_size,
                              action_dim=int(env.action_space.shape[0]), future_frames=future_frames)
        return cls(cfg, render_steps=render_steps)

    def view(self, *, render_steps: str | Sequence[int]) -> "SimulatorWorldModel":
        """Another model over the same env and synced state with different ``render_steps`` (e.g. for videos)."""
        other = SimulatorWorldModel(self.config, render_steps=render_steps, env=self.env)
        other._synced = self._synced  # sync on either one updates both
        return other

    def sync(self, state_or_env: Any) -> None:
        """Set the state predictions start from: a `get_sim_state()` dict or an env (its current state)."""
        state = state_or_env.get_sim_state() if hasattr(state_or_env, "get_sim_state") else state_or_env
        if state["variation_seed"] != self.env.variation_seed:
            self.env.set_variation(state["variation_seed"])
            self.env.reset()
        self.env.set_sim_state(state)  # validates task/variation; renders once (cheap per plan)
        self._synced["state"] = state

    def _synced_state(self) -> dict[str, Any]:
        state = self._synced["state"]
        if state is None:
            raise RuntimeError("SimulatorWorldModel: call sync(env or env.get_sim_state()) before predict")
        return state

    def _restore(self, state: dict[str, Any], horizon: int) -> None:
        # The env's own restore (exact, solver warm start included), without rendering the restored frame.
        self.env.set_sim_state(state, render=False)
        raw = self.env.unwrapped_metaworld
        # Near the episode limit the clone would refuse to step; the step counter only drives truncation, so
        # pulling it back lets imagination run the full horizon.
        if hasattr(raw, "curr_path_length"):
            raw.curr_path_length = min(int(raw.curr_path_length), self.env.max_steps - horizon)

    def _render_set(self, horizon: int) -> list[int]:
        if self.render_steps == "all":
            return list(range(horizon))
        if self.render_steps == "final":
            return [horizon - 1]
        steps = sorted({int(s) % horizon for s in self.render_steps})
        return steps if steps and steps[-1] == horizon - 1 else steps + [horizon - 1]

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        state = self._synced_state()
        b = context_frames.shape[0]
        render = self._render_set(horizon)
        acts = actions.detach().cpu().numpy().astype(np.float32)  # [B, T, A]
        size = self.config.image_size
        out = np.empty((b, horizon, size, size, 3), np.uint8)
        finals = []
        if horizon > self.env.max_steps:
            raise ValueError(f"horizon {horizon} exceeds the episode limit {self.env.max_steps}")
        for i in range(b):
            self._restore(state, horizon)
            frames, state_obs = {}, None
            for t in range(horizon):
                # Steps that are neither rendered nor among the last two (the final 39-d state stacks the previous
                # step's observation) skip Meta-World's observation and reward code: same physics, ~2x faster.
                observe = t in render or t >= horizon - 2
                stepped = self.env.physics_step(acts[i, t], observe=observe)[0]  # clears the cached image
                if observe:
                    state_obs = stepped
                self.num_physics_steps += 1
                if t in render:
                    frames[t] = self.env.render()  # [H, W, 3] uint8; renders the current data
                    self.num_rendered += 1
            finals.append(state_obs)
            # steps that were not rendered copy the next rendered frame
            nxt = None
            for t in reversed(range(horizon)):
                nxt = frames.get(t, nxt)
                out[i, t] = nxt
        self.last_final_states = np.stack(finals) if finals else np.zeros((0, 0))  # [B, 39] after the last step
        video = torch.from_numpy(out).permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B, T, 3, H, W]
        return video[:, None].expand(-1, num_samples, -1, -1, -1, -1).clone().to(context_frames.device)

    def loss(self, batch):
        raise RuntimeError("the simulator world model has nothing to train")
