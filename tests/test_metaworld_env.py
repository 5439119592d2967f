"""Meta-World image envs: API conformance, determinism, exact cloning, demos, goals, resumable collection."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")

from envs.demos import collect_demos, render_replay, rollout_expert, split_of  # noqa: E402
from envs.goals import goal_from_episode, make_goal  # noqa: E402
from envs.metaworld import MT50_TASKS, expert_policy, make_env  # noqa: E402
from foresight.data.episodes import MANIFEST, EpisodeDataset, read_manifest  # noqa: E402

pytestmark = pytest.mark.mujoco
REPO = Path(__file__).resolve().parents[1]


def random_actions(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 4)).astype(np.float32)


def test_task_list_and_policies():
    assert len(MT50_TASKS) == 50 and len(set(MT50_TASKS)) == 50
    assert all(t.endswith("-v3") for t in MT50_TASKS)
    for t in MT50_TASKS:
        expert_policy(t)  # every task has a scripted expert
    env = make_env("door-open-v3", image_size=16)
    state = env.reset()[0]["state"]
    before = state.copy()
    expert_policy("door-open-v3")(state)
    np.testing.assert_array_equal(state, before)  # the expert must not edit the caller's observation
    env.close()
    with pytest.raises(ValueError, match="unknown"):
        make_env("reach-v2")


@pytest.mark.parametrize("task", ["reach-v3", "assembly-v3"])
def test_gymnasium_check_env(task):
    from gymnasium.utils.env_checker import check_env

    env = make_env(task, image_size=32)
    check_env(env, skip_render_check=True)
    obs, info = env.reset()
    assert env.observation_space.contains(obs)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    obs, r, terminated, truncated, info = env.step(env.action_space.sample())
    assert info["success"] in (0.0, 1.0) and terminated is False and truncated is False
    assert np.array_equal(env.render(), obs["image"])
    env.close()


def test_same_seed_and_actions_give_identical_frames():
    acts = random_actions(8, 0)
    runs = []
    for _ in range(2):
        env = make_env("pick-place-v3", variation_seed=4, image_size=32)
        obs, _ = env.reset()
        frames, states = [obs["image"]], [obs["state"]]
        for a in acts:
            obs, *_ = env.step(a)
            frames.append(obs["image"])
            states.append(obs["state"])
        runs.append((np.stack(frames), np.stack(states)))
        env.close()
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0].std(axis=0).max() > 0  # the arm moved: frames differ over time


def test_reset_does_not_depend_on_the_previous_episode():
    """Meta-World's own reset observation is built from stale kinematics; ours must not be."""
    fresh = make_env("door-open-v3", variation_seed=0, image_size=32)
    first = fresh.reset()[0]
    used = make_env("door-open-v3", variation_seed=0, image_size=32)
    used.reset()
    policy = expert_policy("door-open-v3")
    obs = used.reset()[0]
    for _ in range(80):  # open the door
        obs = used.step(policy(obs["state"]))[0]
    again = used.reset()[0]
    np.testing.assert_array_equal(again["state"], first["state"])
    np.testing.assert_array_equal(again["image"], first["image"])
    fresh.close()
    used.close()


def test_variation_seeds_select_variations():
    env = make_env("pick-place-v3", variation_seed=0, image_size=32)
    first0 = env.reset()[0]
    first1 = env.reset(seed=1)[0]
    assert env.variation_seed == 1
    assert not np.array_equal(first0["state"], first1["state"])  # object/goal positions differ
    again = env.reset()[0]  # no seed: same variation again
    np.testing.assert_array_equal(again["image"], first1["image"])
    back = env.reset(options={"variation_seed": 0})[0]
    np.testing.assert_array_equal(back["image"], first0["image"])
    env.close()


def test_sim_state_clone_is_exact():
    acts = random_actions(16, 1)
    a = make_env("door-open-v3", variation_seed=2, image_size=32)
    a.reset()
    for act in acts[:6]:
        a.physics_step(act)
    saved = a.get_sim_state()
    cont_a = [a.step(act)[0] for act in acts[6:]]
    b = make_env("door-open-v3", variation_seed=2, image_size=32)
    obs_b = b.set_sim_state(saved)
    np.testing.assert_array_equal(b.get_sim_state()["physics"], saved["physics"])  # incl. solver warm start
    cont_b = [b.step(act)[0] for act in acts[6:]]
    for oa, ob in zip(cont_a, cont_b):
        np.testing.assert_array_equal(oa["image"], ob["image"])
        np.testing.assert_array_equal(oa["state"], ob["state"])
    # restoring into the same env rewinds it; the no-render path restores the same state
    assert a.set_sim_state(saved, render=False) is None
    np.testing.assert_array_equal(a.get_sim_state()["physics"], saved["physics"])
    np.testing.assert_array_equal(a.render(), obs_b["image"])
    obs_a = a.set_sim_state(saved)
    np.testing.assert_array_equal(obs_a["image"], obs_b["image"])
    with pytest.raises(ValueError, match="variation"):
        b.reset(seed=3)
        b.set_sim_state(saved)


def test_expert_demo_and_goal_image_agree():
    env = make_env("reach-v3", variation_seed=9, image_size=32)
    ep, first = rollout_expert(env, expert_policy("reach-v3"), success_tail=10)
    assert first is not None and len(ep["frames"]) == first + 11
    assert ep["success"][first] and not ep["success"][:first].any()
    assert ep["actions"].shape == (len(ep["frames"]) - 1, 4) and np.abs(ep["actions"]).max() <= 1
    goal = make_goal("reach-v3", 9, env=env)
    assert goal.step == first
    np.testing.assert_array_equal(goal.image, ep["frames"][first])
    g2 = goal_from_episode({**ep, "task": "reach-v3", "variation": 9})
    np.testing.assert_array_equal(g2.image, goal.image)
    # physics-only rollout + rendered replay (the collection path) gives the same episode
    blind, first2 = rollout_expert(env, expert_policy("reach-v3"), success_tail=10, render=False)
    assert first2 == first and "frames" not in blind
    replayed = render_replay(env, blind)
    for k in ("frames", "actions", "states", "success"):
        np.testing.assert_array_equal(replayed[k], ep[k])
    assert split_of(9) == "test" and split_of(8) == "train"


def test_settled_goal_lies_deeper_in_success():
    env = make_env("reach-v3", variation_seed=9, image_size=32)
    ep, first = rollout_expert(env, expert_policy("reach-v3"), success_tail=20)
    edge = make_goal("reach-v3", 9, env=env)
    goal = make_goal("reach-v3", 9, env=env, settle_steps=20)
    assert edge.step == edge.first_success == goal.first_success == first
    # the expert keeps closing in on the target: the settled goal is a later, strictly deeper frame of the same demo
    assert first < goal.step <= first + 20
    assert goal.success_distance < edge.success_distance < 0.05
    assert ep["success"][goal.step]
    np.testing.assert_array_equal(goal.image, ep["frames"][goal.step])
    np.testing.assert_allclose(goal.state, ep["states"][goal.step], rtol=0, atol=1e-6)  # stored as float32
    with pytest.raises(ValueError, match="settle_steps"):
        make_goal("reach-v3", 9, env=env, settle_steps=-1)
    env.close()


def test_goal_subgoals_are_frames_of_the_expert_run_evenly_spaced_before_the_goal():
    from envs.goals import subgoal_steps

    assert subgoal_steps(100, 3) == [25, 50, 75] and subgoal_steps(3, 5) == [1, 2] and subgoal_steps(10, 0) == []
    env = make_env("reach-v3", variation_seed=9, image_size=32)
    ep, first = rollout_expert(env, expert_policy("reach-v3"), success_tail=10)
    goal = make_goal("reach-v3", 9, env=env, settle_steps=10, subgoals=3)
    assert goal.subgoal_steps == subgoal_steps(goal.step, 3) and len(goal.subgoals) == 3
    for k, img, state in zip(goal.subgoal_steps, goal.subgoals, goal.subgoal_states):
        np.testing.assert_array_equal(img, ep["frames"][k])
        np.testing.assert_allclose(state, ep["states"][k], rtol=0, atol=1e-6)
    plain = make_goal("reach-v3", 9, env=env, settle_steps=10)
    assert plain.subgoals is None and plain.step == goal.step
    np.testing.assert_array_equal(plain.image, goal.image)  # asking for subgoals does not move the goal
    with pytest.raises(ValueError, match="subgoals"):
        make_goal("reach-v3", 9, env=env, subgoals=-1)
    env.close()


def test_settled_index_rules():
    from envs.goals import _settled_index

    def c(step, d):
        return (step, d, None, None, None)

    assert _settled_index([c(5, 0.04), c(6, 0.03), c(7, 0.03), c(8, 0.035)]) == 1   # smallest, earliest on ties
    # no usable distance (door-open reports 0): the middle of the first run of consecutive successes
    assert _settled_index([c(5, 0.0), c(6, 0.0), c(7, 0.0), c(8, 0.0), c(9, 0.0), c(12, 0.0)]) == 2
    assert _settled_index([c(5, None), c(6, None)]) == 0
    assert _settled_index([c(5, 0.0)]) == 0


def test_image_size_128():
    env = make_env("reach-v3", image_size=128)
    obs = env.reset()[0]
    assert obs["image"].shape == (128, 128, 3) and obs["image"].std() > 10  # a picture, not a blank buffer
    env.close()


@pytest.mark.slow
def test_resume_after_killed_collection(tmp_path):
    """Kill a real collection process mid-way, resume, and find every demo exactly once and intact."""
    root = tmp_path / "ds"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r});"
            "from envs.demos import collect_demos;"
            f"collect_demos({str(root)!r}, tasks=['reach-v3'], demos_per_task=4, workers=0, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "MUJOCO_GL": "egl"})
    manifest = root / MANIFEST
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(read_manifest(root, include_failed=True))
    assert 1 <= n_before < 4, "the kill should land mid-collection"
    summary = collect_demos(root, tasks=["reach-v3"], demos_per_task=4, workers=0, progress=False)
    assert summary.skipped == n_before and summary.new_episodes + summary.new_failures == 4 - n_before
    lines = manifest.read_text().splitlines()
    keys = [(json.loads(line)["task"], json.loads(line)["variation"]) for line in lines]
    assert sorted(keys) == [("reach-v3", v) for v in range(4)]  # each once
    ds = EpisodeDataset(root)
    episodes = [ds[i] for i in range(len(ds))]  # every file passes its checks
    env = make_env("reach-v3", variation_seed=0)
    ref, _ = rollout_expert(env, expert_policy("reach-v3"))
    got = next(e for e in episodes if e["variation"] == 0)
    np.testing.assert_array_equal(got["frames"], ref["frames"])  # the killed process wrote the same pixels


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_rejected_and_leaves_the_episode_alone(bad):
    # MuJoCo used to accept it and silently reset the physics mid-episode (the hand jumped to the model default).
    env = make_env("reach-v3", image_size=16)
    env.reset()
    env.step(np.array([0.5, 0.0, 0.0, 0.0], np.float32))
    state, steps = env.get_sim_state()["physics"].copy(), env.steps
    with pytest.raises(ValueError, match="finite.*(nan|inf)"):
        env.step(np.array([0.0, bad, 0.0, 0.0], np.float32))
    np.testing.assert_array_equal(env.get_sim_state()["physics"], state)
    assert env.steps == steps
    env.close()
