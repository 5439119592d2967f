"""The planning benchmark harness (experiments/plan_to_goal.py) end to end on a tiny saved model."""

import json

import numpy as np
import pytest
import torch

from experiments import plan_to_goal
from experiments.plan_to_goal import aggregate_metaworld
from foresight.metrics import wilson_interval


def test_wilson_interval_known_values():
    # Reference values of the 95 % Wilson score interval (z = 1.96).
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-3) and hi == pytest.approx(1.0)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)


def test_aggregate_weighs_tasks_equally():
    rows = [{"task": "a", "variation": v, "success": 1.0} for v in range(4)]
    rows += [{"task": "b", "variation": 0, "success": 0.0}]
    agg = aggregate_metaworld(rows)
    assert agg["per_task"]["a"]["success_rate"] == 1.0 and agg["per_task"]["b"]["success_rate"] == 0.0
    assert agg["overall"]["mean_task_success"] == 0.5  # the pooled rate would be 0.8
    assert agg["overall"]["success_rate"] == pytest.approx(0.8)
    lo, hi = agg["per_task"]["a"]["success_ci95"]
    assert 0 < lo < 1 and hi == pytest.approx(1.0)


@pytest.fixture
def tiny_ghvae_dir(tmp_path):
    from foresight.config import preset
    from foresight.models.ghvae import GHVAE, GHVAEConfig

    torch.manual_seed(0)
    cfg = preset(GHVAEConfig, "tiny")
    model = GHVAE(cfg).set_stage(f"module{cfg.num_modules}")
    # A fresh GHVAE predicts "nothing moves" (its pixel head starts at zero); give it some dynamics so that
    # candidates get different costs.
    torch.nn.init.normal_(model.stack[0].decoder.out[-1].weight, std=0.2)
    return model.save_pretrained(tmp_path / "ghvae" / "model")


def _args(model_dir, out, **extra):
    args = {"model": str(model_dir), "tasks": "[reach-v3]", "variations": "[10000]", "num_samples": 6,
            "iterations": 1, "horizon": 3, "max_steps": 3, "replan_every": 1, "control_check": "true",
            "control_plans": 6, "out": str(out), "name": "bench", "videos": "true"}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


@pytest.mark.mujoco
def test_benchmark_end_to_end_and_resume(tiny_ghvae_dir, tmp_path):
    out = tmp_path / "runs"
    info = plan_to_goal.main(_args(tiny_ghvae_dir, out))
    run = out / "bench"
    saved = json.loads((run / "eval_info.json").read_text())
    assert saved["per_episode"] == json.loads(json.dumps(info["per_episode"]))
    (row,) = saved["per_episode"]
    for key in ("success", "first_success_step", "final_state_distance", "final_pixel_distance",
                "plan_seconds_mean", "control_check"):
        assert key in row
    assert row["steps"] == 3 and row["plans"] == 3
    assert all(len(row[k]) == 3 for k in ("final_hand", "final_object", "goal_hand", "goal_object"))
    assert abs(np.linalg.norm(np.r_[row["final_hand"], row["final_object"]] - np.r_[row["goal_hand"], row["goal_object"]])
               - row["final_state_distance"]) < 1e-3
    check = saved["control_check"]["reach-v3"]
    assert check["plans"] == 6 and set(check["motion"]) == {"+x", "-x", "+y", "-y", "+z", "-z"}
    assert check["spearman"] is None or -1 <= check["spearman"] <= 1
    for key in ("spearman_true_cost_vs_state_distance", "spearman_model_cost_vs_state_distance"):
        assert check[key] is None or -1 <= check[key] <= 1, (key, check[key])
    assert check["spearman_true_cost_vs_state_distance"] is not None  # real frames differ, so the cost does
    assert all(m["true"] > 0 for m in check["motion"].values())  # the real hand moves under a pure action
    agg = saved["aggregated"]
    assert agg["per_task"]["reach-v3"]["episodes"] == 1 and len(agg["overall"]["success_ci95"]) == 2
    assert (run / "videos" / "reach-v3__v10000.mp4").stat().st_size > 0
    import imageio.v3 as iio
    strip = iio.imread(run / "strips" / "reach-v3__v10000.png")
    assert strip.shape[0] > 3 * 64  # three rows: real | imagined | goal
    # Imagined row is not blank: the planner recorded the sample it scored.
    rows = np.split(strip[2:2 + 3 * 66], 3, axis=0)
    assert rows[1].mean() > 5

    # A second run of the same command resumes: the finished episode is not played again.
    again = plan_to_goal.main(_args(tiny_ghvae_dir, out))
    assert again["per_episode"][0]["seconds"] == row["seconds"]
    with pytest.raises(ValueError, match="another config"):
        plan_to_goal.main(_args(tiny_ghvae_dir, out, num_samples=7))


@pytest.mark.mujoco
def test_control_check_with_a_model_space_cost_measures_motion_in_that_space(tiny_ghvae_dir, tmp_path):
    info = plan_to_goal.main(_args(tiny_ghvae_dir, tmp_path, cost="embedding", max_steps=1, name="emb",
                                   videos="false"))
    check = info["control_check"]["reach-v3"]
    assert check["cost"] == "embedding" and set(check["embedding_motion"]) == set(check["motion"])
    assert all(m["true"] > 0 for m in check["embedding_motion"].values())  # the pooled real frame changes
    assert 0 <= check["embedding_direction_accuracy"] <= 1


@pytest.mark.mujoco
def test_planning_step_is_deterministic_under_a_seed(tiny_ghvae_dir):
    import foresight
    from agents.mpc import VisualMPC
    from agents.optimizers import CEM

    model = foresight.load(tiny_ghvae_dir)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    goal = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)

    def plan(seed):
        agent = VisualMPC(model, CEM(num_samples=12, iterations=2, min_elites=3), horizon=4,
                          action_low=-np.ones(4), action_high=np.ones(4), seed=seed)
        agent.reset(goal)
        return agent.act(obs)

    a, b, c = plan(3), plan(3), plan(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_episode_workers_end_when_the_run_is_killed(tmp_path):
    # A killed run used to leave its worker processes playing on (unrecorded episodes, CPU taken from the next run).
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(plan_to_goal._ROOT)!r})\n"
        "import multiprocessing as mp\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from experiments.plan_to_goal import _exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=_exit_with_parent,\n"
        "                               initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 60)\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(f"/proc/{worker}/stat") as f:
                if f.read().split()[2] == "Z":  # exited, waiting to be reaped
                    break
        except FileNotFoundError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its killed parent run by 10 s")


def test_resume_accepts_a_run_made_before_an_option_existed(tmp_path):
    cfg = plan_to_goal.PlanToGoalConfig(tasks=("reach-v3",), variations=(10000,))
    old = json.loads(json.dumps(plan_to_goal.to_dict(cfg)))
    del old["stop_on_success"]  # the run was started by a version without this option
    (tmp_path / "eval_info.json").write_text(json.dumps({"config": old, "per_episode": [{"task": "reach-v3"}]}))
    assert plan_to_goal._resumable_rows(tmp_path, cfg) == [{"task": "reach-v3"}]
    # the same folder named by another path (out=/abs/runs vs out=runs) is the same run
    assert plan_to_goal._resumable_rows(tmp_path, plan_to_goal.replace(cfg, out=str(tmp_path))) \
        == [{"task": "reach-v3"}]
    # ... but asking for the new behaviour is another config
    with pytest.raises(ValueError, match="another config"):
        plan_to_goal._resumable_rows(tmp_path, plan_to_goal.PlanToGoalConfig(tasks=("reach-v3",), variations=(10000,),
                                                                            stop_on_success=True))


@pytest.mark.mujoco
def test_benchmark_with_subgoals_records_the_switches_and_shows_the_goal_in_force(tmp_path):
    args = _args("copy_last", tmp_path, cost="pixel", control_check="false", max_steps=4, subgoals=2,
                 subgoal_max_steps=2, name="sub")
    (row,) = plan_to_goal.main(args)["per_episode"]
    assert len(row["subgoal_steps"]) == 2 and row["subgoal_steps"][0] < row["subgoal_steps"][1] < row["goal_step"]
    # copy_last never gets near a subgoal, so each one is left when its 2 steps are spent
    assert row["subgoal_switch_steps"] == [2, 4][:row["subgoals_passed"]] and row["subgoals_passed"] >= 1
    import imageio.v3 as iio
    from envs.goals import make_goal

    strip = iio.imread(tmp_path / "sub" / "strips" / "reach-v3__v10000.png")
    goal_row = np.split(strip[2:2 + 3 * 66], 3, axis=0)[2]
    first, last = goal_row[:64, 2:66, :3], goal_row[:64, -66:-2, :3]  # the goal panel at the first and last step
    goal = make_goal("reach-v3", 10000, settle_steps=40, subgoals=2)
    assert np.abs(first.astype(int) - goal.subgoals[0]).mean() < np.abs(first.astype(int) - goal.image).mean()
    assert not np.array_equal(first, last)
    with pytest.raises(SystemExit):
        from experiments.common import cli_main
        cli_main(plan_to_goal.main, plan_to_goal.PlanToGoalConfig, "", argv=["subgoal_advance=1.5"])


@pytest.mark.mujoco
def test_scripted_gripper_height_per_task(tmp_path, monkeypatch):
    seen = []
    build = plan_to_goal._build_agent

    def spy(cfg, *args, **kwargs):
        agent = build(cfg, *args, **kwargs)
        seen.append(agent.gripper.z_threshold)
        return agent

    monkeypatch.setattr(plan_to_goal, "_build_agent", spy)
    args = _args("copy_last", tmp_path, cost="pixel", control_check="false", max_steps=1, videos="false",
                 tasks="[reach-v3,push-v3]", gripper="true", gripper_z=1.0, gripper_z_by_task="{push-v3: 0.08}")
    info = plan_to_goal.main(args)
    assert [r["task"] for r in info["per_episode"]] == ["reach-v3", "push-v3"]
    assert seen == [1.0, 0.08]  # reach: the default height; push: its own
    assert info["config"]["gripper_z_by_task"] == {"push-v3": 0.08}


def test_a_missing_model_is_a_usage_error_before_any_run_folder(tmp_path):
    from experiments.common import UsageError
    from experiments.plan_to_goal import main

    (tmp_path / "empty").mkdir()
    for model, message in ((tmp_path / "nothing", "checkpoint not found"), (tmp_path / "empty", "no checkpoint at")):
        with pytest.raises(UsageError, match=message):
            main([f"model={model}", f"out={tmp_path / 'out'}", "name=run", "tasks=[reach-v3]", "variations=[10000]"])
    assert not (tmp_path / "out").exists()


def test_subgoal_expert_pace_needs_subgoals(tmp_path):
    from experiments.common import UsageError
    from experiments.plan_to_goal import main

    with pytest.raises(UsageError, match="needs subgoals > 0"):
        main(["subgoal_expert_pace=true", "model=copy_last", f"out={tmp_path}", "name=run"])


@pytest.mark.mujoco
def test_control_check_runs_with_a_scripted_gripper(tiny_ghvae_dir, tmp_path):
    # The check's random plans are full 4-D actions; with gripper=true the objective takes the 3 planned dims
    # (this raised a shape mismatch, which in a 2-worker run silently cost the whole run).
    info = plan_to_goal.main(_args(tiny_ghvae_dir, tmp_path, cost="embedding", max_steps=1, name="grip",
                                   videos="false", gripper="true", gripper_z="1.0"))
    check = info["control_check"]["reach-v3"]
    assert check["plans"] == 6 and all(m["true"] > 0 for m in check["motion"].values())


def test_a_failing_episode_stops_a_worker_run_at_once(tmp_path, monkeypatch):
    # The pool's `with` block used to play every remaining episode before the error surfaced, recording none.
    monkeypatch.setattr(plan_to_goal, "_worker_episode", _failing_episode)
    variations = "[" + ", ".join(str(10000 + i) for i in range(12)) + "]"
    import time
    t0 = time.time()
    with pytest.raises(RuntimeError, match="episode reach-v3 variation 10002 failed: ValueError: boom"):
        plan_to_goal.main(["model=copy_last", f"out={tmp_path}", "name=run", "tasks=[reach-v3]",
                           f"variations={variations}", "workers=2", "control_check=false", "videos=false"])
    info = json.loads((tmp_path / "run" / "eval_info.json").read_text())
    played = {r["variation"] for r in info["per_episode"]}
    # the episode that finished before the failure is kept; the failed one is not; those not started are cancelled
    assert 10000 in played and 10002 not in played and len(played) <= 8
    assert time.time() - t0 < 60


def _failing_episode(cfg, task, variation, run_dir):
    import time
    if variation == 10002:  # the first worker's second episode, well after its first is recorded
        time.sleep(2.0)
        raise ValueError("boom")
    time.sleep(0.5)
    return {"task": task, "variation": variation, "success": 0.0, "success_final": 0.0, "steps": 1, "plans": 0,
            "first_success_step": None, "final_state_distance": 0.1, "initial_state_distance": 0.2,
            "final_pixel_distance": 1.0, "initial_pixel_distance": 2.0, "plan_seconds_mean": 0.0, "seconds": 1.0}
