"""Replay environment over one recorded RoboNet trajectory.

A real robot's trajectory cannot be re-simulated, so the environment *replays* it: observations are the
recorded frames, and whatever action an agent sends, the next observation is the next recorded frame. What the
environment measures is how far the agent's choices are from what the robot actually did:

* open-loop prediction: `score_open_loop(model)` gives a world model the context frames and the *recorded*
  future actions and compares its imagined frames with the recorded ones (MSE / PSNR per future step);
* planning: `score_plan(actions, predicted_frames)` compares a plan made toward `goal_image()` (the recorded
  final frame by default) with the recorded actions and frames; `run_closed_loop(plan_fn)` re-plans at every
  recorded step and scores each executed action against the recorded one.

Frames leave this module as float32 ``[..., 3, H, W]`` in [0, 1] (the library convention); observations from
`reset` / `step` are dicts with 'image' uint8 ``[H, W, 3]`` (what a camera gives) and 'state' float32 ``[S]``.
Actions are harmonised (see `foresight.data.robonet`) to ``target_adim``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
import torch

from foresight.data.robonet import (
    STANDARD_CONTEXT_FRAMES,
    harmonise_actions,
    harmonise_states,
    read_file_metadata,
    read_trajectory,
)


def _mse_psnr(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame MSE and PSNR over the trailing [3, H, W] axes (frames in [0, 1])."""
    mse = (pred.float() - target.float()).pow(2).flatten(-3).mean(-1)
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return mse, psnr


class RoboNetReplayEnv:
    """Step through a recorded trajectory (keyword-only options).

    Args:
        path: a RoboNet HDF5 file.
        camera: camera stream to observe.
        image_size: H = W of the observations (64 standard, 256 supported).
        target_adim, target_sdim, impute_autograsp: action/state harmonisation.
        context_frames: C, the frames a model or planner sees before acting (standard 2).
        max_steps: use at most this many recorded steps (None: all usable steps).
        metadata: the file's index row, to skip re-reading the header.

    Attributes: ``frames`` uint8 [T, H, W, 3], ``actions`` float32 [T-1, A], ``states`` float32 [T, S],
    ``t`` (index of the current frame), ``metadata``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        camera: int = 0,
        image_size: int = 64,
        target_adim: int = 4,
        target_sdim: int = 5,
        impute_autograsp: bool = True,
        context_frames: int = STANDARD_CONTEXT_FRAMES,
        max_steps: int | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        meta = metadata if metadata is not None else read_file_metadata(path, with_hash=False)
        steps = int(meta["steps"]) if max_steps is None else min(int(meta["steps"]), int(max_steps))
        if steps <= context_frames:
            raise ValueError(f"{path}: {steps} usable steps, need more than context_frames={context_frames}")
        traj = read_trajectory(path, cameras=[camera], image_size=(image_size, image_size), num_steps=steps,
                               metadata=meta)
        self.path, self.camera, self.metadata = str(path), camera, traj.metadata
        self.context_frames = int(context_frames)
        self.frames = traj.images[:, 0]  # [T, H, W, 3] uint8
        self.states = harmonise_states(traj.states, target_sdim)  # [T, S]
        self.actions = harmonise_actions(traj.actions, target_adim=target_adim, states=traj.states,
                                         primitives=meta.get("primitives"), low_bound=meta.get("low_bound"),
                                         high_bound=meta.get("high_bound"), impute_autograsp=impute_autograsp)
        self.t = 0

    # -- gym-like interface -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """T, the number of recorded frames."""
        return int(self.frames.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self.frames[self.t], "state": self.states[self.t]}

    def reset(self, *, start: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Go to frame ``start`` (default C - 1: the last context frame, so `context()` is available)."""
        start = self.context_frames - 1 if start is None else int(start)
        if not 0 <= start < self.num_steps - 1:
            raise ValueError(f"start must be in [0, {self.num_steps - 2}], got {start}")
        self.t = start
        return self._obs(), {"t": self.t, "file": os.path.basename(self.path)}

    def step(self, action: np.ndarray | torch.Tensor) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Advance to the next recorded frame. reward = -squared error between ``action`` [A] and the recorded
        action; info holds 'recorded_action' and 'action_error'. terminated at the last recorded frame."""
        if self.t >= self.num_steps - 1:
            raise RuntimeError("episode is over; call reset()")
        action = np.asarray(action.detach().cpu() if isinstance(action, torch.Tensor) else action, np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},), got {tuple(action.shape)}")
        recorded = self.actions[self.t]
        err = float(np.sum((action - recorded) ** 2))
        self.t += 1
        done = self.t == self.num_steps - 1
        return self._obs(), -err, done, False, {"t": self.t, "recorded_action": recorded, "action_error": err}

    # -- views for models and planners --------------------------------------------------------------------
    def frames_tensor(self, start: int, stop: int) -> torch.Tensor:
        """Recorded frames start .. stop - 1 as float32 [1, stop - start, 3, H, W] in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(self.frames[start:stop]))  # [T', H, W, 3] uint8
        return x.permute(0, 3, 1, 2).float().div_(255.0).unsqueeze(0)  # [1, T', 3, H, W]

    def context(self) -> torch.Tensor:
        """The last C frames up to the current one: [1, C, 3, H, W] float in [0, 1]."""
        if self.t < self.context_frames - 1:
            raise ValueError(f"need t >= {self.context_frames - 1} for {self.context_frames} context frames, t={self.t}")
        return self.frames_tensor(self.t - self.context_frames + 1, self.t + 1)

    def goal_image(self, index: int = -1) -> torch.Tensor:
        """The recorded frame ``index`` (default: the final frame) as [1, 3, H, W] float in [0, 1]."""
        i = index % self.num_steps
        return self.frames_tensor(i, i + 1)[:, 0]

    def recorded_future(self, horizon: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """From the current frame: recorded actions [1, h, A] and the frames they led to [1, h, 3, H, W],
        h = min(horizon, frames left)."""
        left = self.num_steps - 1 - self.t
        h = left if horizon is None else min(int(horizon), left)
        actions = torch.from_numpy(self.actions[self.t:self.t + h]).unsqueeze(0)  # [1, h, A]
        return actions, self.frames_tensor(self.t + 1, self.t + 1 + h)

    # -- scoring ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score_open_loop(self, model: Any, *, horizon: int | None = None, num_samples: int = 1,
                        seed: int = 0, start: int | None = None) -> dict[str, Any]:
        """Predict the recorded future from C context frames and the recorded actions; compare.

        ``model``: a `foresight.WorldModel` (its ``predict(context [B, C, 3, H, W], actions [B, h, A],
        num_samples, seed=)`` -> [B, S, h, 3, H, W]), or any callable with that signature.
        Returns 'mse' [h] and 'psnr' [h] of the best sample per step (best by mean PSNR over the clip),
        'psnr_mean', 'mse_mean', 'predicted' [S, h, 3, H, W], 'target' [h, 3, H, W].
        """
        self.reset(start=start)
        context = self.context()  # [1, C, 3, H, W]
        actions, target = self.recorded_future(horizon)  # [1, h, A], [1, h, 3, H, W]
        predict = model.predict if hasattr(model, "predict") else model
        device = getattr(model, "device", torch.device("cpu"))
        pred = predict(context.to(device), actions.to(device), num_samples, seed=seed).cpu()  # [1, S, h, 3, H, W]
        if pred.shape[2:] != target.shape[1:]:
            raise ValueError(f"model predicted {list(pred.shape)}, expected [1, S, {list(target.shape[1:])}]")
        mse, psnr = _mse_psnr(pred[0], target[0].unsqueeze(0))  # [S, h]
        best = int(psnr.mean(1).argmax())
        return {"mse": mse[best], "psnr": psnr[best], "mse_mean": float(mse[best].mean()),
                "psnr_mean": float(psnr[best].mean()), "best_sample": best, "predicted": pred[0], "target": target[0]}

    def score_plan(self, actions: torch.Tensor | np.ndarray, *,
                   predicted_frames: torch.Tensor | None = None) -> dict[str, float]:
        """Compare a plan [h, A] made from the current frame (toward `goal_image()`) with the recording.

        Returns 'action_mse' (mean squared error per action entry vs the recorded actions over the overlap),
        'action_mse_xyz' (first three entries), and with ``predicted_frames`` [h, 3, H, W]: 'frame_mse' and
        'frame_psnr' vs the recorded frames, and 'final_to_goal_mse' (last predicted frame vs the final
        recorded frame, the planner's own objective).
        """
        plan = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions).float()
        if plan.ndim != 2 or plan.shape[1] != self.action_dim:
            raise ValueError(f"actions: expected [h, {self.action_dim}], got {list(plan.shape)}")
        rec_actions, rec_frames = self.recorded_future(plan.shape[0])  # [1, h', A], [1, h', 3, H, W]
        h = rec_actions.shape[1]
        if h == 0:
            raise ValueError("no recorded steps left after the current frame")
        diff = plan[:h] - rec_actions[0]
        out = {"action_mse": float(diff.pow(2).mean()), "action_mse_xyz": float(diff[:, :3].pow(2).mean()),
               "steps_compared": h}
        if predicted_frames is not None:
            pf = torch.as_tensor(predicted_frames).float().cpu()
            if pf.ndim != 4 or pf.shape[1:] != rec_frames.shape[2:]:
                raise ValueError(f"predicted_frames: expected [h, {list(rec_frames.shape[2:])}], got {list(pf.shape)}")
            n = min(h, pf.shape[0])
            mse, psnr = _mse_psnr(pf[:n], rec_frames[0, :n])
            goal_mse, _ = _mse_psnr(pf[-1:], self.goal_image())
            out.update(frame_mse=float(mse.mean()), frame_psnr=float(psnr.mean()), final_to_goal_mse=float(goal_mse))
        return out

    def run_closed_loop(self, plan_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], *,
                        horizon: int = 10, goal_index: int = -1) -> dict[str, Any]:
        """Re-plan at every recorded step from the last C frames toward the goal frame; score each action.

        ``plan_fn(context [1, C, 3, H, W], goal [1, 3, H, W], horizon) -> actions [h, A]``; the first action is
        executed (compared with the recorded one) and the replay moves on along the recording. Returns
        'action_errors' [steps] (squared error per executed action), 'action_mse' (mean per entry) and 'steps'.
        """
        self.reset()
        goal = self.goal_image(goal_index)
        errors = []
        while self.t < self.num_steps - 1:
            h = min(horizon, self.num_steps - 1 - self.t)
            plan = torch.as_tensor(plan_fn(self.context(), goal, h))
            _, _, done, _, info = self.step(plan[0])
            errors.append(info["action_error"])
            if done:
                break
        errs = np.asarray(errors, np.float64)
        return {"action_errors": errs, "action_mse": float(errs.mean() / self.action_dim) if len(errs) else math.nan,
                "steps": len(errs)}
