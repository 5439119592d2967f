"""experiments/plan_to_goal.py on RoboNet recordings (replay, closed-loop planning toward the final frame), and
`VisualMPC.plan_from`, the one-shot planning call it uses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agents.mpc import GripperHeuristic, VisualMPC
from agents.optimizers import CEM, RandomShooting
from envs.robonet_replay import RoboNetReplayEnv
from experiments import plan_to_goal
from foresight.data.robonet import write_synthetic_trajectories
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig

FRAMES = 8
PLANNER = ["planner=cem", "num_samples=8", "iterations=1", "min_elites=2", "horizon=3", "image_size=16",
           "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def robonet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robonet")
    # sawyer: 4-D autograsp actions; widowx: 5-D actions (x, y, z, theta, gripper)
    write_synthetic_trajectories(folder, 2, robots=("sawyer", "widowx"), steps=FRAMES, frame_size=(24, 32),
                                 encoding="jpeg", seed=0)
    return folder


@pytest.fixture(scope="module")
def conv_checkpoint(tmp_path_factory):
    def save(action_dim: int):
        torch.manual_seed(0)
        cfg = ConvPredictorConfig(**{**ConvPredictorConfig.PRESETS["tiny"], "action_dim": action_dim,
                                     "context_frames": 2})
        path = tmp_path_factory.mktemp(f"conv{action_dim}") / "model"
        ConvPredictor(cfg).save_pretrained(path)
        return path
    return save


def run(tmp_path, robonet_dir, *args):
    return plan_to_goal.main([f"robonet_dir={robonet_dir}", f"out={tmp_path}", "name=run", *PLANNER, *args])


def finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_copy_last_mpc_rows_aggregates_strips(tmp_path, robonet_dir):
    info = run(tmp_path, robonet_dir, "model=copy_last")
    on_disk = json.loads((tmp_path / "run" / "eval_info.json").read_text())
    assert on_disk["per_file"] == info["per_file"] and (tmp_path / "run" / "config.yaml").exists()
    rows = info["per_file"]
    assert [r["robot"] for r in rows] == ["sawyer", "widowx"] and [r["recorded_adim"] for r in rows] == [4, 5]
    assert info["action_dim"] == 4 and info["context_frames"] == 1
    for r in rows:
        # copy_last sees 1 context frame: it acts at every recorded frame but the last
        assert r["frames"] == FRAMES and r["steps"] == FRAMES - 1 and r["plans"] == FRAMES - 1
        for k in plan_to_goal.ROBONET_KEYS:
            assert finite(r[k]), (k, r[k])
        assert r["action_mse"] >= 0 and r["action_mse_xyz"] >= 0 and r["first_frame_psnr"] > 10
        # copy_last imagines no motion: its last imagined frame is the start frame
        assert r["final_to_goal_mse"] == pytest.approx(r["initial_to_goal_mse"], rel=1e-5)
        assert r["initial_to_goal_mse"] > 0  # the synthetic blob moves
        assert (tmp_path / "run" / "strips" / f"{r['file'][:-5]}.png").stat().st_size > 100
    agg = info["aggregated"]
    assert set(agg["per_robot"]) == {"sawyer", "widowx"} and agg["overall"]["episodes"] == 2
    assert agg["overall"]["action_mse"] == pytest.approx(np.mean([r["action_mse"] for r in rows]))
    assert agg["per_robot"]["widowx"]["action_mse"] == pytest.approx(rows[1]["action_mse"])
    # the action box defaults to the per-dim max |recorded action| over the files (floored at 1e-3)
    recorded = np.concatenate([RoboNetReplayEnv(robonet_dir / r["file"], image_size=16).actions for r in rows])
    np.testing.assert_allclose(info["action_high"], np.maximum(np.abs(recorded).max(0), 1e-3), rtol=1e-6)


def test_checkpoint_with_two_context_frames_and_5d_actions(tmp_path, robonet_dir, conv_checkpoint):
    info = run(tmp_path, robonet_dir, f"model={conv_checkpoint(5)}", "robonet_action_bound=0.1", "cost=embedding")
    assert info["action_dim"] == 5 and info["context_frames"] == 2 and info["action_high"] == [pytest.approx(0.1)] * 5
    for r in info["per_file"]:
        assert r["steps"] == FRAMES - 2  # two context frames: planning starts at frame 1
        assert all(finite(r[k]) for k in plan_to_goal.ROBONET_KEYS)
        assert r["final_to_goal_mse"] != pytest.approx(r["initial_to_goal_mse"])  # this model imagines change


def test_random_agent_baseline_and_file_selection(tmp_path, robonet_dir):
    (tmp_path / "split.txt").write_text("widowx_traj1.hdf5\nsawyer_traj0.hdf5\n")
    info = run(tmp_path, robonet_dir, "agent=random", f"robonet_split={tmp_path / 'split.txt'}",
               "robonet_files=1")  # default model=simulator is fine: the random agent plans with no model
    (row,) = info["per_file"]
    assert row["file"] == "widowx_traj1.hdf5" and row["steps"] == FRAMES - 1  # list order kept, capped at 1
    assert row["first_frame_psnr"] is None and row["final_to_goal_mse"] is None  # no model, nothing imagined
    assert "first_frame_psnr" not in info["aggregated"]["overall"] and finite(info["aggregated"]["overall"]["action_mse"])
    # uniform actions over the whole box are worse than doing nothing
    assert row["action_mse"] > row["action_mse_zero"] > 0
    only = run(tmp_path, robonet_dir, "model=copy_last", "robonet_robots=[sawyer]")
    assert [r["robot"] for r in only["per_file"]] == ["sawyer"]


def test_clear_errors(tmp_path, robonet_dir, conv_checkpoint):
    with pytest.raises(ValueError, match="simulator cannot plan on RoboNet"):
        run(tmp_path, robonet_dir)  # model=simulator is the default
    with pytest.raises(ValueError, match="robonet_adim must be 4 or 5"):
        run(tmp_path, robonet_dir, "model=copy_last", "robonet_adim=3")
    with pytest.raises(ValueError, match="action_dim=3; RoboNet actions are harmonised to 4"):
        run(tmp_path, robonet_dir, f"model={conv_checkpoint(3)}")
    with pytest.raises(ValueError, match=r"action_dim=5; RoboNet actions \(robonet_adim\) are 4-D"):
        run(tmp_path, robonet_dir, f"model={conv_checkpoint(5)}", "robonet_adim=4")
    with pytest.raises(ValueError, match="no RoboNet file"):
        run(tmp_path, robonet_dir, "model=copy_last", "robonet_robots=[kuka]")


# ---------------------------------------------------------------------------------------------------------
# VisualMPC.plan_from


def _tiny_conv(action_dim: int = 2) -> ConvPredictor:
    torch.manual_seed(0)
    cfg = ConvPredictorConfig(**{**ConvPredictorConfig.PRESETS["tiny"], "action_dim": action_dim, "context_frames": 2})
    return ConvPredictor(cfg).eval()


def _agent(model, optimizer=None, **kw):
    return VisualMPC(model, optimizer or CEM(num_samples=12, iterations=2, min_elites=3), horizon=3,
                     action_low=-np.ones(model.action_dim), action_high=np.ones(model.action_dim), seed=3, **kw)


def test_plan_from_matches_act_and_returns_imagined_frames():
    model = _tiny_conv()
    g = torch.Generator().manual_seed(0)
    obs = [(torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy() for _ in range(3)]
    goal = torch.rand(3, 16, 16, generator=g)
    looped = _agent(model)
    looped.reset(goal)
    acted = [looped.act(o) for o in obs]
    direct = _agent(model, record=False)
    frames = torch.stack([torch.from_numpy(o).permute(2, 0, 1).float() / 255 for o in obs])  # [3, 3, 32, 32]
    for t in range(3):  # the same context, goal, warm start and seed as act() at step t
        actions, imagined = direct.plan_from(frames[None, : t + 1], goal[None], executed=int(t > 0))
        np.testing.assert_array_equal(actions[0].numpy(), acted[t])
        assert actions.shape == (3, 2) and imagined.shape == (3, 3, 16, 16)  # frames resized to the model's 16
        assert 0 <= float(imagined.min()) and float(imagined.max()) <= 1
    assert [r.step for r in direct.records] == [0, 1, 2] and direct.records[0].imagined is None


def test_plan_from_warm_start_shift_goal_reset_and_errors():
    init_means = []

    class Spy(RandomShooting):
        def optimize(self, objective, **kw):
            init_means.append(kw["init_mean"])
            return super().optimize(objective, **kw)

    agent = _agent(_tiny_conv(), Spy(num_samples=10))
    ctx, goal = torch.rand(2, 3, 16, 16), torch.rand(3, 16, 16)
    plan0, _ = agent.plan_from(ctx, goal, imagine=False)
    agent.plan_from(ctx, goal, executed=2)  # same goal: warm start = previous plan shifted by 2
    assert init_means[0] is None
    assert torch.allclose(init_means[1], torch.cat([plan0[2:], plan0[-1:].expand(2, -1)]))
    agent.plan_from(ctx, 1 - goal)  # a new goal starts over
    assert init_means[2] is None
    with pytest.raises(ValueError, match="expected \\[C, 3, H, W\\]"):
        agent.plan_from(torch.rand(3, 16, 16), goal)
    with pytest.raises(RuntimeError, match="pass goal_image"):
        _agent(_tiny_conv()).plan_from(ctx)
    with pytest.raises(ValueError, match="gripper heuristic"):
        _agent(_tiny_conv(), gripper=GripperHeuristic(action_index=1)).plan_from(ctx, goal)
