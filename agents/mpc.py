"""Closed-loop visual MPC toward a goal image, with any `foresight.WorldModel`.

Axis legend::

    N  candidate plans     S  model samples per candidate     C  context frames
    H  planning horizon    A  action dimension                 T  predicted frames (= H)

Each control step the agent keeps the last C observed frames, and, every ``replan_every`` steps, asks a
`TrajectoryPlanner` for the action sequence whose imagined future (``model.predict``) is closest to the goal
under a `Cost`; it executes the first ``replan_every`` actions of that plan, then replans from the new frames
(warm-started from the old plan, shifted). With ``record=True`` it keeps the imagined video of every chosen plan
(`PlanRecord`) so evaluation can show it beside what really happened.

    agent = VisualMPC(model, CEM(num_samples=200, iterations=3), horizon=10, action_low=-np.ones(4),
                      action_high=np.ones(4), cost="pixel")
    obs, _ = env.reset()
    agent.reset(goal_image)                     # [3, H, W] float in [0, 1]
    obs, *_ = env.step(agent.act(obs))          # obs['image'] uint8 [H, W, 3]

The agent works with any env-like object with the gymnasium API whose observations are an image (uint8
``[H, W, 3]``) or a dict holding one under ``image_key``; `run_episode` is the plain loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agents.costs import Cost, make_cost
from agents.optimizers import Optimizer, PlanResult, TrajectoryPlanner
from foresight.world_model import WorldModel

__all__ = ["VisualMPC", "GripperHeuristic", "PlanRecord", "ScoredCandidate", "RandomActionAgent", "SubgoalSchedule",
           "run_episode", "image_to_tensor"]


def image_to_tensor(image: Any, size: int | None = None) -> Tensor:
    """uint8 ``[H, W, 3]`` (numpy or tensor) or float ``[3, H, W]`` in [0, 1] -> float32 ``[3, size, size]``."""
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    if x.dtype == torch.uint8:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"image: expected uint8 [H, W, 3], got {list(x.shape)}")
        x = x.permute(2, 0, 1).float() / 255.0  # [3, H, W]
    elif x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image: expected uint8 [H, W, 3] or float [3, H, W], got {list(x.shape)} {x.dtype}")
    x = x.float()
    return x if size is None else resize_frames(x[None], size)[0]


def resize_frames(frames: Tensor, size: int) -> Tensor:
    """float ``[N, 3, h, w]`` in [0, 1] -> ``[N, 3, size, size]`` (antialiased bilinear; unchanged if already so)."""
    if tuple(frames.shape[-2:]) == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _to_uint8(frames: Tensor) -> np.ndarray:
    # [..., 3, H, W] float in [0, 1] -> [..., H, W, 3] uint8
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


@dataclass
class GripperHeuristic:
    """Scripted gripper (classic visual foresight): close when the hand drops below a height, else open.

    Reads the hand height from ``obs[state_key][state_index]`` and writes ``closed`` / ``open`` into action dim
    ``action_index``; the planner then searches only over the other action dims. Meta-World: the hand z is
    state[2]; objects rest at z ~ 0.02-0.05 m.
    """

    action_index: int = 3
    state_key: str = "state"
    state_index: int = 2
    z_threshold: float = 0.08
    closed: float = 1.0
    open: float = -1.0

    def __call__(self, obs: Any) -> float:
        if not isinstance(obs, dict) or self.state_key not in obs:
            raise ValueError(f"GripperHeuristic needs observations with a '{self.state_key}' entry")
        z = float(np.asarray(obs[self.state_key])[self.state_index])
        return self.closed if z < self.z_threshold else self.open


@dataclass
class PlanRecord:
    """One planning step: the chosen plan and what the model imagined it would do.

    step: control step at which it was planned. actions: float32 [H, A]. cost: its planning cost.
    imagined: uint8 [H, h, w, 3] the model's predicted frames for the plan (None if not recorded).
    evaluations: candidate plans scored. seconds: planning wall time.
    """

    step: int
    actions: np.ndarray
    cost: float
    evaluations: int
    seconds: float
    imagined: np.ndarray | None = None
    iteration_costs: list[float] = field(default_factory=list)


@dataclass
class ScoredCandidate:
    """The lowest-cost candidate a planning objective has scored so far, with what the model predicted for it.

    cost: its cost. actions: float32 [H, A]. frames: [S, H, 3, h, w] its predicted frames, when the objective
    had them (pixel costs, or embeddings computed from frames). embeddings: [S, H, D] (embedding costs).
    batch / row: the actions [n, H, A] of the ``predict`` call it was scored in and its row there: models draw
    their noise for the whole batch, so the same seed reproduces the sample only in the same batch position.
    """

    cost: float = math.inf
    actions: Tensor | None = None
    frames: Tensor | None = None
    embeddings: Tensor | None = None
    batch: Tensor | None = None
    row: int = 0


class VisualMPC:
    """Visual model-predictive control toward a goal image.

    Args:
        model: any `WorldModel` (learned, baseline or the simulator model).
        optimizer: an `Optimizer` (RandomShooting, CEM, ICEM, MPPI).
        horizon: planned steps H (must not exceed what the model predicts well; no hard check).
        action_low / action_high: ``[A]`` bounds of the env's actions.
        cost: "pixel", "lpips", "embedding" or a factory ``goal_image [3, H, W] -> Cost``.
        cost_weighting: "final", "all", "linear" (see `agents.costs.horizon_weights`).
        action_repeat: plan H/r distinct actions, each held r steps.
        replan_every: execute this many actions of each plan before replanning (the warm-start shift).
        num_model_samples: S futures per candidate for stochastic models (the cost averages over them).
        gripper: optional `GripperHeuristic`; the planner then leaves that action dim alone.
        rest_action: ``[A]`` the action that keeps the robot still (Meta-World: zeros); holding it is offered as
            a candidate in every plan, so an agent at its goal can stay there (`TrajectoryPlanner`).
        record: keep each chosen plan's imagined video (`records`): the sample the planner scored (its first
            model sample), not a fresh prediction, which for a stochastic model would show another future.
        record_model: model used for the recorded video (default: ``model``, whose scored sample is then
            recorded); e.g. a simulator model that renders every step while the planning one renders only the
            frames the cost needs.
        predict_batch_size: candidates per ``model.predict`` call (bounds memory; None = all at once).
        before_plan: called before every planning step (e.g. to sync a simulator model to the real env).
        seed: base seed of the optimiser and model sampling (step t uses seed + t).
    """

    def __init__(self, model: Any, optimizer: Optimizer, *, horizon: int, action_low: Any, action_high: Any,
                 cost: str | Callable[[Tensor], Cost] = "pixel", cost_weighting: str = "final",
                 action_repeat: int = 1, replan_every: int = 1, num_model_samples: int = 1, warm_start: bool = True,
                 gripper: GripperHeuristic | None = None, record: bool = True, record_model: Any = None,
                 predict_batch_size: int | None = None, before_plan: Callable[[], None] | None = None,
                 image_key: str = "image", rest_action: Any = None, seed: int = 0):
        low = torch.as_tensor(np.asarray(action_low), dtype=torch.float32).flatten()
        high = torch.as_tensor(np.asarray(action_high), dtype=torch.float32).flatten()
        if model.action_dim not in (0, low.numel()):
            raise ValueError(f"model.action_dim={model.action_dim} but the action bounds have {low.numel()} dims")
        if replan_every < 1 or replan_every > horizon:
            raise ValueError(f"replan_every must be in [1, horizon={horizon}], got {replan_every}")
        self.model = model
        self.record_model = model if record_model is None else record_model
        self.horizon = int(horizon)
        self.low, self.high = low, high
        self.gripper = gripper
        self.planned_dims = [i for i in range(low.numel()) if gripper is None or i != gripper.action_index]
        self.planner = TrajectoryPlanner(optimizer, horizon=horizon, action_low=low[self.planned_dims],
                                         action_high=high[self.planned_dims], action_repeat=action_repeat,
                                         warm_start=warm_start,
                                         rest_action=None if rest_action is None else torch.as_tensor(
                                             np.asarray(rest_action), dtype=torch.float32).flatten()[self.planned_dims])
        self.cost_spec = cost
        self.cost_weighting = cost_weighting
        self.replan_every = int(replan_every)
        self.num_model_samples = int(num_model_samples)
        self.record = bool(record)
        self.predict_batch_size = predict_batch_size
        self.before_plan = before_plan
        self.image_key = image_key
        self.seed = int(seed)
        self._lpips = None
        self.cost: Cost | None = None
        self.reset_state()

    # ------------------------------------------------------------------ episode state
    def reset_state(self) -> None:
        self.context: list[Tensor] = []  # the last C frames, each [3, H, W]
        self.plan: Tensor | None = None  # [H, A] full actions
        self.plan_step = 0
        self.t = 0
        self.records: list[PlanRecord] = []
        self.planner.reset()

    def reset(self, goal_image: Any, obs: Any = None) -> None:
        """Start an episode toward ``goal_image`` (uint8 [H, W, 3] or float [3, H, W]); optionally the first obs."""
        self.reset_state()
        goal = image_to_tensor(goal_image, self.model.image_size)
        self.goal_image = goal
        self.cost = self._build_cost(goal)
        if obs is not None:
            self.observe(obs)

    def set_goal(self, goal_image: Any) -> None:
        """Aim at another goal image within the episode: the context, step counter and warm start are kept, and
        the next `act` replans toward the new goal (a `SubgoalSchedule` moving on to its next image)."""
        if self.cost is None:
            raise RuntimeError("call reset(goal_image) before set_goal()")
        goal = image_to_tensor(goal_image, self.model.image_size)
        self.goal_image = goal
        self.cost = self._build_cost(goal)
        if self.plan is not None:
            self.plan_step = self.replan_every  # replan at the next act

    @torch.no_grad()
    def goal_distance(self, obs: Any) -> float:
        """The planner's cost of the observed frame itself (one frame, no prediction) toward the current goal."""
        if self.cost is None:
            raise RuntimeError("call reset(goal_image) before goal_distance()")
        frame = image_to_tensor(self._image(obs), self.model.image_size).to(self.model.device)
        x = frame[None, None, None]  # [N=1, S=1, T=1, 3, H, W]
        if self.cost.space == "embeddings":
            x = self.model.embed(x)  # [1, 1, 1, D]
        return float(self.cost(x)[0])

    def _build_cost(self, goal: Tensor) -> Cost:
        if callable(self.cost_spec) and not isinstance(self.cost_spec, str):
            return self.cost_spec(goal)
        if self.cost_spec == "lpips":
            if self._lpips is None:
                self._lpips = make_cost("lpips", goal, weighting=self.cost_weighting).lpips
            return make_cost("lpips", goal, weighting=self.cost_weighting, lpips=self._lpips)
        return make_cost(self.cost_spec, goal, model=self.model, weighting=self.cost_weighting)

    def _image(self, obs: Any) -> Any:
        return obs[self.image_key] if isinstance(obs, dict) else obs

    def observe(self, obs: Any) -> None:
        """Append the frame of ``obs`` to the context (called by `act`; call it yourself to add frames)."""
        frame = image_to_tensor(self._image(obs), self.model.image_size)
        self.context.append(frame)
        self.context = self.context[-max(self.model.context_frames, 1):]

    def context_tensor(self) -> Tensor:
        """The last C frames ``[C, 3, H, W]``; before C frames were seen, the first one is repeated."""
        c = max(self.model.context_frames, 1)
        frames = self.context
        if len(frames) < c:
            frames = [frames[0]] * (c - len(frames)) + frames
        return torch.stack(frames)

    # ------------------------------------------------------------------ planning
    def _full_actions(self, planned: Tensor, gripper_value: float | None) -> Tensor:
        # planned [N, H, A'] (dims the planner searches) -> [N, H, A]
        if self.gripper is None:
            return planned
        full = planned.new_empty(*planned.shape[:-1], self.low.numel())
        full[..., self.planned_dims] = planned
        full[..., self.gripper.action_index] = gripper_value
        return full

    def _predict(self, model: Any, context: Tensor, actions: Tensor, embeddings: bool, seed: int) -> Tensor:
        n = actions.shape[0]
        ctx = context[None].expand(n, -1, -1, -1, -1)  # [N, C, 3, H, W]
        fn = model.predict_embeddings if embeddings else model.predict
        if model.action_dim == 0:
            return fn(ctx, None, self.num_model_samples, horizon=actions.shape[1], seed=seed)
        return fn(ctx, actions, self.num_model_samples, seed=seed)

    def objective(self, context: Tensor, gripper_value: float | None, seed: int) -> Callable[[Tensor], Tensor]:
        """The planning objective ``actions [N, H, A'] -> cost [N]`` from the current context.

        ``objective(...).best`` is a `ScoredCandidate`: the lowest-cost candidate scored so far and its prediction.
        """
        embeddings = self.cost.space == "embeddings"
        # A model whose predict_embeddings is the default embed(predict(...)): run the two steps here, so the
        # frames of the scored sample are at hand for the record (the costs are the same).
        via_frames = embeddings and getattr(type(self.model), "predict_embeddings", None) is WorldModel.predict_embeddings
        best = ScoredCandidate()

        def f(planned: Tensor) -> Tensor:
            actions = self._full_actions(planned, gripper_value)
            bs = self.predict_batch_size or actions.shape[0]
            costs = []
            for i in range(0, actions.shape[0], bs):
                chunk = actions[i:i + bs]
                # The same model seed for every chunk: candidates are compared under common random numbers.
                if via_frames:
                    frames = self._predict(self.model, context, chunk, False, seed)  # [n, S, H, 3, h, w]
                    with torch.no_grad():
                        out = self.model.embed(frames)  # [n, S, H, D]
                else:
                    out = self._predict(self.model, context, chunk, embeddings, seed)
                    frames = None if embeddings else out
                c = self.cost(out).float().cpu()  # [n]
                j = int(torch.nan_to_num(c, nan=math.inf).argmin())
                if float(c[j]) < best.cost:  # strict, as in the optimisers: ties keep the first scored
                    best.cost, best.actions, best.row = float(c[j]), chunk[j].clone(), j
                    best.frames = None if frames is None else frames[j].clone()
                    best.embeddings = out[j].clone() if embeddings else None
                    best.batch = chunk.clone() if embeddings and frames is None else None
                costs.append(c)
            return torch.cat(costs)

        f.best = best
        return f

    def _imagined(self, context: Tensor, seed: int, best: ScoredCandidate) -> Tensor:
        """Frames ``[H, 3, h, w]`` of the chosen plan (``self.plan``): the first sample the planner scored for it."""
        if self.record_model is self.model and best.actions is not None and torch.equal(best.actions, self.plan):
            if best.frames is not None:
                return best.frames[0]
            decode = getattr(self.model, "decode_embeddings", None)
            if decode is not None:  # e.g. codebook vectors -> pixels: one decode of the scored sample
                return decode(best.embeddings[None])[0, 0]
            frames_of = getattr(self.model, "predict_embedding_frames", None)
            if frames_of is not None:
                # A model whose latent rollout draws its noise per sample, not per batch row (GHVAE): the chosen
                # plan alone, same seed, is the sample that was scored, decoded to pixels.
                ctx = context[None]
                plan = best.actions[None]
                if self.model.action_dim == 0:
                    return frames_of(ctx, None, self.num_model_samples, horizon=plan.shape[1], seed=seed)[0, 0]
                return frames_of(ctx, plan, self.num_model_samples, seed=seed)[0, 0]
            # Re-run the predict call that scored it: same seed, same batch, same row -> the same sample.
            return self._predict(self.model, context, best.batch, False, seed)[best.row, 0]
        # A separate record model (e.g. a simulator view rendering every step), or a plan the objective never scored.
        return self._predict(self.record_model, context.to(self.record_model.device), self.plan[None],
                             False, seed)[0, 0]  # [1, S, H, 3, h, w] -> [H, 3, h, w]

    def _optimise_plan(self, context: Tensor, gripper_value: float | None, seed: int, imagine: bool) -> Tensor | None:
        # context [C, 3, H, W] on the model's device -> sets self.plan [H, A], appends a PlanRecord and returns
        # the chosen plan's imagined frames [H, 3, h, w] (first sample) when imagine or self.record, else None.
        t0 = time.perf_counter()
        objective = self.objective(context, gripper_value, seed)
        res: PlanResult = self.planner.plan(objective, seed=seed)
        seconds = time.perf_counter() - t0
        self.plan = self._full_actions(res.actions[None], gripper_value)[0]  # [H, A]
        self.plan_step = 0
        video = self._imagined(context, seed, objective.best) if imagine or self.record else None
        self.records.append(PlanRecord(step=self.t, actions=self.plan.numpy().copy(), cost=res.cost,
                                       evaluations=res.num_evaluations, seconds=seconds,
                                       imagined=_to_uint8(video) if self.record else None,
                                       iteration_costs=list(res.iteration_costs)))
        return video

    def _replan(self, obs: Any) -> None:
        if self.before_plan is not None:
            self.before_plan()
        gripper_value = None if self.gripper is None else self.gripper(obs)
        context = self.context_tensor().to(self.model.device)
        self._optimise_plan(context, gripper_value, self.seed + self.t, imagine=False)

    def plan_from(self, context: Tensor, goal_image: Any = None, *, executed: int = 0,
                  imagine: bool = True) -> tuple[Tensor, Tensor | None]:
        """Plan once from given frames toward a goal image, outside the observe / act loop (e.g. when replaying
        a recording, where the frames come from the recording rather than from the agent's own actions).

        Args:
            context: ``[C', 3, H, W]`` or ``[1, C', 3, H, W]`` float in [0, 1]; the last C frames are used,
                resized to the model's size (fewer than C: the first one is repeated).
            goal_image: uint8 ``[H, W, 3]`` or float ``[3, H, W]`` / ``[1, 3, H, W]``. A goal other than the
                current one starts a new episode (`reset`: no warm start); None keeps the current goal.
            executed: actions carried out since the previous `plan_from` call: the warm start shifts by that many
                steps and the step counter advances with it (the optimiser / model seed is ``seed + step``, as
                in `act`).
            imagine: also return the model's imagined frames of the chosen plan (one extra model call).

        Returns:
            actions ``[H, A]`` float32 inside the bounds, and the imagined frames ``[H, 3, h, w]`` in [0, 1]
            (the first model sample the planner scored for them, or ``record_model``'s prediction when one is
            given; h = the model's image size) or None.
        """
        if self.gripper is not None:
            raise ValueError("plan_from() has no observation for the gripper heuristic; use act(), or gripper=None")
        if goal_image is not None:
            if isinstance(goal_image, Tensor) and goal_image.ndim == 4:
                if goal_image.shape[0] != 1:
                    raise ValueError(f"goal_image: expected [1, 3, H, W], got {list(goal_image.shape)}")
                goal_image = goal_image[0]
            goal = image_to_tensor(goal_image, self.model.image_size)
            if self.cost is None or not torch.equal(goal, self.goal_image):
                self.reset(goal)
        if self.cost is None:
            raise RuntimeError("pass goal_image (or call reset(goal_image)) before plan_from()")
        if executed < 0:
            raise ValueError(f"executed must be >= 0, got {executed}")
        frames = torch.as_tensor(context)
        if frames.ndim == 5:
            if frames.shape[0] != 1:
                raise ValueError(f"context: expected [1, C, 3, H, W], got {list(frames.shape)}")
            frames = frames[0]  # [C', 3, H, W]
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"context: expected [C, 3, H, W] or [1, C, 3, H, W], got {list(frames.shape)}")
        if executed:
            self.planner.advance(executed)
            self.t += executed
        self.context = [image_to_tensor(f, self.model.image_size) for f in frames[-max(self.model.context_frames, 1):]]
        if self.before_plan is not None:
            self.before_plan()
        video = self._optimise_plan(self.context_tensor().to(self.model.device), None, self.seed + self.t, imagine)
        actions = self.plan.clamp(self.low, self.high).float().cpu()  # [H, A]
        return actions, (None if video is None or not imagine else video.float().cpu())

    def act(self, obs: Any) -> np.ndarray:
        """Observe ``obs`` and return the next action, float32 ``[A]`` inside the bounds."""
        if self.cost is None:
            raise RuntimeError("call reset(goal_image) before act()")
        self.observe(obs)
        if self.plan is None or self.plan_step >= self.replan_every:
            if self.plan is not None:
                self.planner.advance(self.plan_step)
            self._replan(obs)
        action = self.plan[self.plan_step].clone()
        if self.gripper is not None:
            action[self.gripper.action_index] = self.gripper(obs)
        self.plan_step += 1
        self.t += 1
        return action.clamp(self.low, self.high).numpy().astype(np.float32)


class SubgoalSchedule:
    """Drive a `VisualMPC` through a sequence of goal images, the last one being the goal.

    A greedy image cost has local minima on the way to a far goal (the arm must first move away from the pictured
    pose, round an obstacle or bring an object along): an image of the way there gives the planner a nearer target.
    Subgoal i is the agent's goal until the observed frame's cost toward it (`VisualMPC.goal_distance`, the cost
    the planner minimises) has fallen to ``advance_fraction`` of what it was when subgoal i became the goal, or
    until ``max_steps_each`` steps were spent on it; the final goal then stays. ``not_before`` (one step index per
    subgoal, e.g. the steps at which the expert's run showed each frame) holds subgoal i against the cost test
    until episode step ``not_before[i]``, for costs that fall early (a coarse embedding that sees the hand above
    an object before the hand is down at it); the timeout still applies. The agent keeps its warm start across
    the switch.

        schedule = SubgoalSchedule(agent, goal.subgoals, max_steps_each=25)
        ep = run_episode(env, schedule, goal.image, max_steps=120)
        schedule.switch_steps        # the step at which each subgoal was left
    """

    def __init__(self, agent: VisualMPC, subgoals: Any, *, max_steps_each: int, advance_fraction: float = 0.2,
                 not_before: Any = None):
        if max_steps_each < 1:
            raise ValueError(f"max_steps_each must be >= 1, got {max_steps_each}")
        if not 0 <= advance_fraction < 1:
            raise ValueError(f"advance_fraction must be in [0, 1), got {advance_fraction}")
        self.agent = agent
        self.subgoals = list(subgoals)
        self.not_before = [0] * len(self.subgoals) if not_before is None else [int(t) for t in not_before]
        if len(self.not_before) != len(self.subgoals) or min(self.not_before, default=0) < 0:
            raise ValueError(f"not_before: expected one step index >= 0 per subgoal ({len(self.subgoals)}), "
                             f"got {not_before}")
        self.max_steps_each = int(max_steps_each)
        self.advance_fraction = float(advance_fraction)
        self.index = 0
        self.switch_steps: list[int] = []

    @property
    def records(self) -> list[PlanRecord]:
        return self.agent.records

    def reset(self, goal_image: Any, obs: Any = None) -> None:
        self.goals = [*self.subgoals, goal_image]
        self.index, self.t, self.since, self.start_cost = 0, 0, 0, None
        self.switch_steps = []
        self.agent.reset(self.goals[0], obs)

    def act(self, obs: Any) -> np.ndarray:
        while self.index < len(self.goals) - 1:
            d = self.agent.goal_distance(obs)
            if self.start_cost is None:
                self.start_cost = d
            held = self.t < self.not_before[self.index] or d > self.advance_fraction * self.start_cost
            if held and self.since < self.max_steps_each:
                break
            self.index += 1
            self.since, self.start_cost = 0, None
            self.switch_steps.append(self.t)
            self.agent.set_goal(self.goals[self.index])
        self.t += 1
        self.since += 1
        return self.agent.act(obs)


class RandomActionAgent:
    """Uniform random actions in the bounds (the floor every planner must beat)."""

    def __init__(self, *, action_low: Any, action_high: Any, seed: int = 0):
        self.low = np.asarray(action_low, np.float32)
        self.high = np.asarray(action_high, np.float32)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.records: list[PlanRecord] = []

    def reset(self, goal_image: Any = None, obs: Any = None) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.records = []

    def act(self, obs: Any) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def run_episode(env: Any, agent: Any, goal_image: Any, *, max_steps: int, reset_kwargs: dict | None = None,
                image_key: str = "image", progress: bool = False, stop_on_success: bool = False) -> dict[str, Any]:
    """Run one closed-loop episode with the gymnasium API.

    ``stop_on_success``: end the episode at the first step whose info reports success (success "at any step" is
    then unchanged, and the episode's last frame is its first successful one).

    Returns a dict with ``frames`` uint8 [T+1, H, W, 3] (real), ``actions`` float32 [T, A], ``rewards`` [T],
    ``success`` [T] (info['success'] if the env reports it, else 0), ``infos`` (last info), ``seconds``.
    """
    obs, info = env.reset(**(reset_kwargs or {}))
    agent.reset(goal_image)
    image = lambda o: np.asarray(o[image_key] if isinstance(o, dict) else o)  # noqa: E731
    frames, actions, rewards, success = [image(obs)], [], [], []
    t0 = time.perf_counter()
    steps = range(max_steps)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="episode", leave=False)
    for _ in steps:
        action = agent.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        frames.append(image(obs))
        actions.append(np.asarray(action, np.float32))
        rewards.append(float(reward))
        success.append(float(info.get("success", 0.0)) if isinstance(info, dict) else 0.0)
        if terminated or truncated or (stop_on_success and success[-1] > 0):
            break
    return {"frames": np.stack(frames), "actions": np.stack(actions) if actions else np.zeros((0, 0), np.float32),
            "rewards": np.asarray(rewards, np.float32), "success": np.asarray(success, np.float32),
            "info": info, "seconds": time.perf_counter() - t0, "records": list(getattr(agent, "records", []))}
