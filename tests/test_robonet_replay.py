"""RoboNet replay environment: stepping, open-loop prediction scoring, plan scoring, closed-loop replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.robonet_replay import RoboNetReplayEnv
from foresight.data import robonet as rn

T = 14


@pytest.fixture(scope="module")
def traj_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "sawyer_traj0.hdf5"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.zeros((T, 1, 32, 32, 3), np.uint8)
    for t in range(T):  # a bright square that moves right: frames differ, so copy-last is not an oracle
        images[t, 0, 10:18, (2 * t) % 24:(2 * t) % 24 + 8] = 230
        images[t, 0, ..., 2] = (40 + 3 * yy).astype(np.uint8)
    states = rng.normal(size=(T, 5)).astype(np.float32)
    rn.write_trajectory(path, images=images, states=states, actions=rng.normal(size=(T - 1, 4)), encoding="jpeg",
                        metadata=rn.default_metadata(robot="sawyer", primitives="autograsp"),
                        low_bound=[-1] * 5, high_bound=[1] * 5)
    return path


def test_replay_steps_through_recording(traj_path):
    env = RoboNetReplayEnv(traj_path, image_size=32, target_adim=5)
    assert env.num_steps == T and env.action_dim == 5  # 4-D autograsp + imputed gripper
    obs, info = env.reset()
    assert env.t == 1 and obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert env.context().shape == (1, 2, 3, 32, 32)
    steps = 0
    done = False
    while not done:
        recorded = env.actions[env.t].copy()
        obs, reward, done, truncated, info = env.step(recorded)
        assert reward == 0.0 and info["action_error"] == 0.0 and not truncated
        np.testing.assert_array_equal(obs["image"], env.frames[env.t])
        steps += 1
    assert steps == T - 2 and env.t == T - 1
    with pytest.raises(RuntimeError):
        env.step(np.zeros(5, np.float32))
    env.reset(start=0)
    _, reward, _, _, info = env.step(env.actions[0] + 1.0)
    assert reward == pytest.approx(-5.0, rel=1e-5)
    with pytest.raises(ValueError, match="expected shape"):
        env.step(np.zeros(3))


def test_score_open_loop_oracle_beats_copy_last(traj_path):
    env = RoboNetReplayEnv(traj_path, image_size=32)

    def oracle(context, actions, num_samples, seed=0):
        h = actions.shape[1]
        future = env.frames_tensor(2, 2 + h)  # [1, h, 3, H, W]
        return future.unsqueeze(1).expand(-1, num_samples, -1, -1, -1, -1)

    def copy_last(context, actions, num_samples, seed=0):
        h = actions.shape[1]
        return context[:, -1:].unsqueeze(1).expand(-1, num_samples, h, -1, -1, -1)

    good = env.score_open_loop(oracle, horizon=10)
    bad = env.score_open_loop(copy_last, horizon=10)
    assert good["mse"].shape == (10,) and good["mse_mean"] == 0.0
    assert bad["mse_mean"] > 1e-3 and bad["psnr_mean"] < good["psnr_mean"]
    assert bad["predicted"].shape == (1, 10, 3, 32, 32) and bad["target"].shape == (10, 3, 32, 32)


def test_score_open_loop_with_library_world_model(traj_path):
    from foresight.models.baselines import CopyLastConfig, CopyLastFrame

    env = RoboNetReplayEnv(traj_path, image_size=32)
    fields = CopyLastConfig.__dataclass_fields__
    kwargs = {k: v for k, v in dict(image_size=32, action_dim=4, context_frames=2, future_frames=10).items()
              if k in fields}
    model = CopyLastFrame(CopyLastConfig(**kwargs))
    out = env.score_open_loop(model, horizon=10, num_samples=2)
    assert out["mse"].shape == (10,) and out["predicted"].shape == (2, 10, 3, 32, 32)
    assert np.isfinite(out["psnr_mean"])


def test_score_plan_and_closed_loop(traj_path):
    env = RoboNetReplayEnv(traj_path, image_size=32)
    env.reset()
    rec_actions, rec_frames = env.recorded_future(5)
    exact = env.score_plan(rec_actions[0], predicted_frames=rec_frames[0])
    assert exact["action_mse"] == 0.0 and exact["frame_mse"] == 0.0 and exact["steps_compared"] == 5
    assert exact["final_to_goal_mse"] > 0.0  # 5 steps in, the goal (last frame) is not reached yet
    off = env.score_plan(rec_actions[0] + 0.5)
    assert off["action_mse"] == pytest.approx(0.25, rel=1e-5)
    # a plan longer than the recording left is compared over the overlap
    env.reset(start=T - 3)
    assert env.score_plan(torch.zeros(10, 4))["steps_compared"] == 2
    with pytest.raises(ValueError, match="expected"):
        env.score_plan(torch.zeros(10, 3))

    def replanner(context, goal, horizon):  # looks up the recording: a perfect planner
        assert context.shape == (1, 2, 3, 32, 32) and goal.shape == (1, 3, 32, 32)
        return torch.from_numpy(env.actions[env.t:env.t + horizon])

    perfect = env.run_closed_loop(replanner, horizon=5)
    assert perfect["steps"] == T - 2 and perfect["action_mse"] == 0.0
    lazy = env.run_closed_loop(lambda c, g, h: torch.zeros(h, 4), horizon=5)
    expected = float(np.mean(env.actions[1:] ** 2))
    assert lazy["action_mse"] == pytest.approx(expected, rel=1e-5)
