"""Meta-World MT50 (metaworld 3.x, v3 tasks) as image environments with a gymnasium API.

    from envs.metaworld import make_env, expert_policy
    env = make_env("pick-place-v3", image_size=64, variation_seed=3)
    obs, info = env.reset()                      # obs = {'image': uint8 [64, 64, 3], 'state': float64 [39]}
    policy = expert_policy("pick-place-v3")
    obs, reward, terminated, truncated, info = env.step(policy(obs["state"]))   # info['success'] in {0., 1.}

Fixed choices (the same pixels for collection, evaluation and planning):

* Camera `DEFAULT_CAMERA`: Meta-World's ``corner2`` moved to (0.75, 0.075, 0.7), field of view 60 degrees, and
  rolled by 180 degrees about its viewing axis. The corner cameras of the Meta-World XML are mounted upside
  down; rolling the camera in the model is the same as rotating the picture by 180 degrees (a true camera view,
  not a mirror image) and costs nothing per frame.
* Fast offscreen rendering, applied by `make_renderer` only: no multisampling, no shadows, no reflections,
  no skybox. Software (Mesa llvmpipe, EGL) rendering then costs ~12 ms per frame instead of ~250 ms at 64x64.
* Task variation: Meta-World ignores ``reset(seed=)`` and takes object/goal positions from a task object's
  ``rand_vec``. Here ``variation_seed`` (an int) determines ``rand_vec`` through `variation_rand_vec`: the task's
  own sampler (including its rejection loops) driven by a generator seeded from (task name, variation_seed).
  ``reset(seed=k)`` switches to variation k; ``reset()`` replays the current variation exactly.
* ``terminated`` is always False (Meta-World convention: success is reported, the episode goes on);
  ``truncated`` becomes True after ``max_steps`` steps (default 500).

Exact cloning for simulator world models: `MetaWorldImageEnv.get_sim_state` returns the full MuJoCo integration
state (time, qpos, qvel, act, warm start, ctrl, applied forces, mocap pose, ...) plus the few Python attributes
Meta-World keeps between steps (step counter, the frame-stacked previous observation, reward bookkeeping flags).
`set_sim_state` on an env of the same task and variation restores them, so stepping the same actions afterwards
gives bit-identical states and frames (tested).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported anywhere

import atexit
import copy
import pickle
import warnings
import weakref
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

import metaworld
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS
from metaworld.policies import ENV_POLICY_MAP

__all__ = [
    "MT50_TASKS",
    "MT50_DIFFICULTY",
    "difficulty_of",
    "MT10_TASKS",
    "CameraConfig",
    "DEFAULT_CAMERA",
    "MetaWorldImageEnv",
    "make_env",
    "make_renderer",
    "expert_policy",
    "variation_rand_vec",
    "STATE_DIM",
    "ACTION_DIM",
]

# The scripted policies warn on every step whose raw action exceeds [-1, 1]; the env clips, so this is noise.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")

MT50_TASKS: tuple[str, ...] = tuple(sorted(ALL_V3_ENVIRONMENTS))  # the 50 v3 task names, alphabetical
# The difficulty groups MT50 results are reported by (Seo et al. 2022, "Masked World Models"; LeRobot's Meta-World
# evaluation uses the same): 28 easy, 11 medium, 6 hard, 5 very hard tasks.
MT50_DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": tuple(f"{t}-v3" for t in (
        "button-press", "button-press-topdown", "button-press-topdown-wall", "button-press-wall", "coffee-button",
        "dial-turn", "door-close", "door-lock", "door-open", "door-unlock", "drawer-close", "drawer-open",
        "faucet-close", "faucet-open", "handle-press", "handle-press-side", "handle-pull", "handle-pull-side",
        "lever-pull", "plate-slide", "plate-slide-back", "plate-slide-back-side", "plate-slide-side", "reach",
        "reach-wall", "window-close", "window-open", "peg-unplug-side")),
    "medium": tuple(f"{t}-v3" for t in (
        "basketball", "bin-picking", "box-close", "coffee-pull", "coffee-push", "hammer", "peg-insert-side",
        "push-wall", "soccer", "sweep", "sweep-into")),
    "hard": tuple(f"{t}-v3" for t in ("assembly", "hand-insert", "pick-out-of-hole", "pick-place", "push", "push-back")),
    "very_hard": tuple(f"{t}-v3" for t in ("shelf-place", "disassemble", "stick-pull", "stick-push", "pick-place-wall")),
}


def difficulty_of(task: str) -> str:
    """The MT50 difficulty group (easy / medium / hard / very_hard) of a v3 task name."""
    for group, tasks in MT50_DIFFICULTY.items():
        if task in tasks:
            return group
    raise ValueError(f"unknown Meta-World v3 task {task!r}; expected one of MT50_TASKS")


# Meta-World's MT10 subset: a diverse 10-task set for small datasets and quick experiments.
MT10_TASKS: tuple[str, ...] = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
                               "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3",
                               "window-open-v3", "window-close-v3")
STATE_DIM = 39  # hand xyz, gripper opening, 2 objects (pos+quat, padded), the same for the previous step, goal
ACTION_DIM = 4  # dx, dy, dz of the hand (x 1/100 m, clipped to [-1, 1]), gripper effort
_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
# Python-side attributes that Meta-World changes during an episode (everything else is fixed by the variation).
_PY_STATE = ("curr_path_length", "_prev_obs", "_last_stable_obs", "_did_see_sim_exception",
             "pickCompleted", "placeCompleted", "reachCompleted", "_target_to_obj_init")


@dataclass(frozen=True)
class CameraConfig:
    """A Meta-World camera, optionally moved (``pos`` in its parent frame), re-aimed and rolled upright."""

    name: str = "corner2"
    pos: tuple[float, float, float] | None = (0.75, 0.075, 0.7)
    fovy: float | None = 60.0
    roll180: bool = True  # the corner cameras are mounted upside down in the Meta-World XML

    @classmethod
    def named(cls, name: str) -> "CameraConfig":
        """An unmodified Meta-World camera; corner cameras are rolled upright."""
        return cls(name=name, pos=None, fovy=None, roll180=name.startswith("corner"))


DEFAULT_CAMERA = CameraConfig()


def _as_camera(camera: CameraConfig | str) -> CameraConfig:
    if isinstance(camera, CameraConfig):
        return camera
    if camera == "default":
        return DEFAULT_CAMERA
    return CameraConfig.named(camera)


def apply_camera(model: mujoco.MjModel, camera: CameraConfig) -> int:
    """Write the camera settings into ``model``; returns the camera id. Call mj_forward before rendering."""
    cid = model.camera(camera.name).id
    if camera.pos is not None:
        model.cam_pos[cid] = camera.pos
    if camera.fovy is not None:
        model.cam_fovy[cid] = camera.fovy
    if camera.roll180:  # each env owns its model, so this runs once per model
        q = np.zeros(4)
        mujoco.mju_mulQuat(q, model.cam_quat[cid].copy(), np.array([0.0, 0.0, 0.0, 1.0]))  # 180 deg about z
        model.cam_quat[cid] = q
    return cid


_RENDERERS: "weakref.WeakSet[mujoco.Renderer]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_renderers() -> None:
    for r in list(_RENDERERS):
        try:
            r.close()
        except Exception:  # the GL display may already be gone; nothing left to free
            pass


def make_renderer(model: mujoco.MjModel, image_size: int) -> mujoco.Renderer:
    """The one place where render settings are chosen: every frame of the project goes through this."""
    global _ATEXIT_REGISTERED
    model.vis.quality.offsamples = 0  # multisampling off (must be set before the GL context exists)
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), image_size)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), image_size)
    try:
        renderer = mujoco.Renderer(model, height=image_size, width=image_size)
    except Exception as e:  # mujoco.FatalError when mujoco was imported before MUJOCO_GL was set
        raise RuntimeError(f"cannot create an offscreen renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): "
                           "import envs (or set MUJOCO_GL=egl) before the first `import mujoco`") from e
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                 mujoco.mjtRndFlag.mjRND_SKYBOX):
        renderer.scene.flags[flag] = 0
    _RENDERERS.add(renderer)
    if not _ATEXIT_REGISTERED:
        # mujoco registers eglTerminate at exit when the first context is made; atexit runs last-in first-out,
        # so this hook (registered after it) closes our contexts while EGL is still alive.
        atexit.register(_close_renderers)
        _ATEXIT_REGISTERED = True
    return renderer


def _variation_seed_to_int(task_name: str, variation_seed: int) -> int:
    # crc32, not hash(): stable across processes and Python versions
    seq = np.random.SeedSequence([zlib.crc32(task_name.encode()), int(variation_seed)])
    return int(seq.generate_state(1)[0])


def _task_object(task_name: str, rand_vec: np.ndarray | None) -> metaworld.Task:
    kwargs = dict(ML1_ARGS_KWARGS[task_name]["kwargs"])
    kwargs.pop("task_id", None)
    kwargs.update(rand_vec=rand_vec, env_cls=ALL_V3_ENVIRONMENTS[task_name], partially_observable=False)
    return metaworld.Task(env_name=task_name, data=pickle.dumps(kwargs))


def variation_rand_vec(raw_env: Any, task_name: str, variation_seed: int) -> np.ndarray:
    """The task's ``rand_vec`` (object and goal positions) for one variation, sampled with the task's own code."""
    raw_env.set_task(_task_object(task_name, None))
    raw_env._freeze_rand_vec = False
    raw_env.seeded_rand_vec = True
    raw_env.seed(_variation_seed_to_int(task_name, variation_seed))
    raw_env.reset()  # runs the task's sampler (with its rejection loops) on raw_env.np_random
    return np.array(raw_env._last_rand_vec, dtype=np.float64)


class MetaWorldImageEnv(gym.Env):
    """One Meta-World v3 task rendered to RGB images, with the 39-d robot/object state beside each image.

    Observation: ``{'image': uint8 [H, W, 3], 'state': float64 [39]}`` (H = W = ``image_size``).
    Action: float32 [4] in [-1, 1] (hand dx, dy, dz; gripper). Info: 'success' (float 0/1) and Meta-World's
    reward terms, plus 'task' and 'variation_seed'.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task_name: str, *, image_size: int = 64, camera: CameraConfig | str = DEFAULT_CAMERA,
                 variation_seed: int = 0, max_steps: int = 500, render_mode: str = "rgb_array"):
        if task_name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World v3 task {task_name!r}; expected one of MT50_TASKS")
        if image_size < 8 or image_size > 1024:
            raise ValueError(f"image_size must be in [8, 1024], got {image_size}")
        if max_steps < 1 or max_steps > 500:
            raise ValueError(f"max_steps must be in [1, 500] (Meta-World's max_path_length), got {max_steps}")
        self.task_name = task_name
        self.image_size = int(image_size)
        self.camera = _as_camera(camera)
        self.max_steps = int(max_steps)
        self.render_mode = render_mode
        self._env = ALL_V3_ENVIRONMENTS[task_name]()  # the raw Meta-World env; no gymnasium renderer of its own
        self._env.max_path_length = self.max_steps
        self._cam_id = apply_camera(self._env.model, self.camera)
        self._renderer = make_renderer(self._env.model, self.image_size)
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (self.image_size, self.image_size, 3), dtype=np.uint8),
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), dtype=np.float64),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        self.variation_seed: int | None = None
        self.rand_vec: np.ndarray | None = None
        self._state_obs: np.ndarray | None = None
        self._image: np.ndarray | None = None
        self.set_variation(variation_seed)

    # -------------------------------------------------------------------------------------- variations

    def set_variation(self, variation_seed: int) -> None:
        """Select a task variation (object and goal positions). Takes effect at the next reset."""
        variation_seed = int(variation_seed)
        if variation_seed == self.variation_seed:
            return
        self.rand_vec = variation_rand_vec(self._env, self.task_name, variation_seed)
        self._env.set_task(_task_object(self.task_name, self.rand_vec))  # freezes rand_vec
        self.variation_seed = variation_seed

    # -------------------------------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Reset to the start of the current variation; ``seed`` (or options['variation_seed']) picks another."""
        super().reset(seed=seed)
        if options and "variation_seed" in options:
            self.set_variation(options["variation_seed"])
        elif seed is not None:
            self.set_variation(seed)
        self._env.reset()
        # Meta-World builds the reset observation before updating kinematics, so it (and a frame rendered now)
        # would show object positions left over from the previous episode. Recompute both from the actual
        # reset state: the first observation then depends only on (task, variation).
        m, d = self._env.model, self._env.data
        mujoco.mj_forward(m, d)
        current = self._env._get_curr_obs_combined_no_goal()
        self._env._prev_obs = current.copy()  # frame stacking: at reset the "previous" step is the current one
        state = self._env._get_obs()
        self._state_obs = np.asarray(state, dtype=np.float64)
        self._image = self._render_now()
        info = {"success": 0.0, "task": self.task_name, "variation_seed": self.variation_seed}
        return self._obs(), info

    def physics_step(self, action: np.ndarray, *, observe: bool = True) -> tuple[np.ndarray, float, bool, dict]:
        """Step the simulation without rendering: (state [39], reward, truncated, info). For planners/rollouts.

        ``observe=False`` (imagined rollouts): the same physics, bit for bit, without Meta-World's observation,
        reward and success computation, which cost about 0.85 ms of the 1 ms of a step; returns (None, 0.0, truncated, {})
        and leaves the state observation stale until the next observed step. Meta-World's 39-d state stacks the
        previous step's observation, so observe the last two steps of a rollout whose final state is wanted, and
        any step that is rendered (the observed step also refreshes the kinematics that the renderer draws).
        """
        if self._state_obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape [{ACTION_DIM}], got {list(action.shape)}")
        if not np.isfinite(action).all():
            # MuJoCo would flag the NaN / inf control as unstable and silently reset the physics mid-episode.
            raise ValueError(f"action must be finite, got {action.tolist()}")
        action = np.clip(action, -1.0, 1.0)
        if self._env.curr_path_length >= self.max_steps:
            raise RuntimeError(f"episode is over ({self.max_steps} steps): call reset()")
        if not observe:
            raw = self._env  # SawyerXYZEnv.step up to its observation, as Meta-World v3 writes it
            raw.set_xyz_action(action[:3])
            raw.do_simulation([action[-1], -action[-1]], n_frames=raw.frame_skip)
            raw.curr_path_length += 1
            for site in raw._target_site_config:
                raw._set_pos_site(*site)
            mujoco.mj_forward(raw.model, raw.data)  # as step does: it also seeds the next step's solver warm start
            self._image = None
            return None, 0.0, bool(raw.curr_path_length == raw.max_path_length), {}
        state, reward, _, truncated, info = self._env.step(action)
        self._state_obs = np.asarray(state, dtype=np.float64)
        self._image = None
        info = dict(info, task=self.task_name, variation_seed=self.variation_seed)
        info["success"] = float(info["success"])
        return self._state_obs.copy(), float(reward), bool(truncated), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        state, reward, truncated, info = self.physics_step(action)
        self._image = self._render_now()
        return self._obs(), reward, False, truncated, info

    def render(self) -> np.ndarray:
        """The current frame, uint8 [H, W, 3] (rendered on demand after `physics_step`)."""
        if self._image is None:
            self._image = self._render_now()
        return self._image.copy()

    def close(self) -> None:
        try:
            self._renderer.close()
        except Exception:
            pass
        self._env.close()

    # -------------------------------------------------------------------------------------- helpers

    @property
    def unwrapped_metaworld(self) -> Any:
        """The raw Meta-World env (SawyerXYZEnv) underneath."""
        return self._env

    @property
    def steps(self) -> int:
        return int(self._env.curr_path_length)

    def _render_now(self) -> np.ndarray:
        self._renderer.update_scene(self._env.data, camera=self._cam_id)
        return self._renderer.render().copy()  # [H, W, 3] uint8

    def _obs(self) -> dict:
        return {"image": self._image.copy(), "state": self._state_obs.copy()}

    # -------------------------------------------------------------------------------------- cloning

    def get_sim_state(self) -> dict[str, Any]:
        """Everything needed to continue this episode exactly: a dict of numpy arrays and scalars (picklable)."""
        m, d = self._env.model, self._env.data
        phys = np.empty(mujoco.mj_stateSize(m, _STATE_SPEC), dtype=np.float64)
        mujoco.mj_getState(m, d, phys, _STATE_SPEC)
        py = {k: copy.deepcopy(getattr(self._env, k)) for k in _PY_STATE if hasattr(self._env, k)}
        return {"task": self.task_name, "variation_seed": self.variation_seed, "physics": phys,
                "python": py, "state_obs": None if self._state_obs is None else self._state_obs.copy()}

    def set_sim_state(self, sim_state: dict[str, Any], *, render: bool = True) -> dict | None:
        """Restore a state from `get_sim_state` of an env with the same task and variation; returns the obs.

        ``render=False`` skips rendering the restored frame (returns None; `render()` draws it on demand): the
        cheap path for planners that restore many times. Restoring is exact, including the solver warm start.
        """
        if sim_state["task"] != self.task_name or sim_state["variation_seed"] != self.variation_seed:
            raise ValueError(f"sim state is for ({sim_state['task']}, variation {sim_state['variation_seed']}), "
                             f"this env is ({self.task_name}, variation {self.variation_seed})")
        m, d = self._env.model, self._env.data
        phys = np.asarray(sim_state["physics"], dtype=np.float64)
        expected = mujoco.mj_stateSize(m, _STATE_SPEC)
        if phys.shape != (expected,):
            raise ValueError(f"sim state physics must have shape [{expected}], got {list(phys.shape)}")
        if self._state_obs is None:  # never reset: let Meta-World set up its per-episode fields first
            self.reset()
        mujoco.mj_setState(m, d, phys, _STATE_SPEC)
        mujoco.mj_forward(m, d)  # derived quantities (positions for rendering and observations)
        # mj_forward also overwrites the solver warm start (qacc_warmstart, part of the state); put it back so the
        # next step starts from exactly the saved state
        mujoco.mj_setState(m, d, phys, _STATE_SPEC)
        for k, v in sim_state["python"].items():
            setattr(self._env, k, copy.deepcopy(v))
        self._state_obs = np.array(sim_state["state_obs"], dtype=np.float64)
        if not render:
            self._image = None
            return None
        self._image = self._render_now()
        return self._obs()


def make_env(task_name: str, *, image_size: int = 64, camera: CameraConfig | str = DEFAULT_CAMERA,
             variation_seed: int = 0, max_steps: int = 500) -> MetaWorldImageEnv:
    """Build the image env for one MT50 task (see `MetaWorldImageEnv`)."""
    return MetaWorldImageEnv(task_name, image_size=image_size, camera=camera, variation_seed=variation_seed,
                             max_steps=max_steps)


def expert_policy(task_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted expert for a task: ``policy(state [39]) -> action float32 [4]`` in [-1, 1]."""
    if task_name not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted policy for {task_name!r}")
    policy = ENV_POLICY_MAP[task_name]()

    def act(state: np.ndarray) -> np.ndarray:
        # np.array copies: some scripted policies edit the observation they are given in place (door-open
        # shifts the handle x by -0.05), which would corrupt the caller's recorded state
        return np.clip(np.asarray(policy.get_action(np.array(state, np.float64)), np.float32), -1.0, 1.0)

    act.__name__ = f"expert[{task_name}]"
    return act
