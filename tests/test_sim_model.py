"""The simulator world model: its imagination is the real future (bit-exact), render-only-final, planning."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.mujoco

metaworld_env = pytest.importorskip("envs.metaworld")
from envs.sim_model import SimulatorWorldModel  # noqa: E402

TASK = "reach-v3"


@pytest.fixture(scope="module")
def env():
    e = metaworld_env.make_env(TASK, image_size=32, variation_seed=1)
    yield e
    e.close()


def test_prediction_equals_real_rollout(env):
    obs, _ = env.reset()
    for _ in range(3):
        obs, *_ = env.step(np.array([0.5, -0.3, 0.2, 0.0], np.float32))
    sim = SimulatorWorldModel.for_env(env, render_steps="all")
    with pytest.raises(RuntimeError, match="sync"):
        sim.predict(torch.zeros(1, 1, 3, 32, 32), torch.zeros(1, 4, 4))
    sim.sync(env)
    before = env.get_sim_state()["physics"].copy()
    rng = np.random.default_rng(0)
    actions = torch.from_numpy(rng.uniform(-1, 1, (3, 4, 4)).astype(np.float32))  # [N=3, T=4, A]
    context = torch.from_numpy(obs["image"]).permute(2, 0, 1).float()[None, None].div(255).expand(3, 1, -1, -1, -1)
    video = sim.predict(context, actions, num_samples=2)
    assert video.shape == (3, 2, 4, 3, 32, 32) and torch.equal(video[:, 0], video[:, 1])
    assert np.array_equal(env.get_sim_state()["physics"], before)  # imagining never touches the real env
    # the real env, stepped with candidate 1's actions from the synced state, shows exactly the same frames
    real = []
    for t in range(4):
        o, *_ = env.step(actions[1, t].numpy())
        real.append(torch.from_numpy(o["image"]).permute(2, 0, 1).float() / 255)
    assert torch.equal(video[1, 0], torch.stack(real))
    # and ends in the state the simulator model recorded for that candidate
    assert sim.last_final_states.shape == (3, o["state"].shape[0])
    np.testing.assert_array_equal(sim.last_final_states[1], o["state"])
    assert not torch.equal(video[0, 0, -1], video[1, 0, -1])  # different actions, different futures
    # final-only rendering: the last frame is the same, and only N frames were rendered
    final = sim.view(render_steps="final")
    n0 = final.num_rendered
    v2 = final.predict(context, actions)
    assert final.num_rendered - n0 == 3 and torch.equal(v2[:, 0, -1], video[:, 0, -1])
    assert torch.equal(v2[:, 0, 0], v2[:, 0, -1])  # unrendered steps copy the next rendered frame


def test_planning_with_the_simulator_moves_toward_a_goal(env):
    from agents.mpc import VisualMPC, run_episode
    from agents.optimizers import CEM

    # Goal: the frame after 8 steps of a fixed action from the start; planning should get closer to it than
    # the start frame is (pixel distance), with a short horizon and few samples.
    obs, _ = env.reset()
    for _ in range(8):
        goal_obs, *_ = env.step(np.array([1.0, 0.0, 0.5, 0.0], np.float32))
    goal = torch.from_numpy(goal_obs["image"]).permute(2, 0, 1).float() / 255
    sim = SimulatorWorldModel.for_env(env, render_steps="final")
    agent = VisualMPC(sim, CEM(num_samples=12, iterations=2, min_elites=3), horizon=4, action_repeat=2,
                      replan_every=4, action_low=-np.ones(4), action_high=np.ones(4), record=False,
                      before_plan=lambda: sim.sync(env), seed=0)
    ep = run_episode(env, agent, goal, max_steps=8)
    dist = lambda img: float(((torch.from_numpy(img).permute(2, 0, 1).float() / 255 - goal) ** 2).sum())  # noqa: E731
    assert dist(ep["frames"][-1]) < 0.7 * dist(ep["frames"][0])  # measured: 8.9 vs 17.2


def test_unobserved_steps_keep_the_physics_exact_through_contact():
    """Final-only rendering skips Meta-World's observation code on most steps; the final frame and state must
    still be exactly the real env's, here while the expert hooks and pulls the door (contact)."""
    env = metaworld_env.make_env("door-open-v3", image_size=32, variation_seed=3)
    policy = metaworld_env.expert_policy("door-open-v3")
    obs, _ = env.reset()
    for _ in range(84):  # hooked on the handle
        obs, *_ = env.step(policy(obs["state"]))
    sim = SimulatorWorldModel.for_env(env, render_steps="final", future_frames=12)
    sim.sync(env)
    start = env.get_sim_state()
    actions = []
    for _ in range(12):  # the real future: the expert keeps pulling
        actions.append(policy(obs["state"]))
        obs, *_ = env.step(actions[-1])
    moved = np.linalg.norm(obs["state"][4:7] - start["state_obs"][4:7])
    plan = torch.from_numpy(np.stack(actions).astype(np.float32))[None]  # [1, 12, 4]
    context = torch.zeros(1, 1, 3, 32, 32)
    video = sim.predict(context, plan)
    assert torch.equal(video[0, 0, -1], torch.from_numpy(obs["image"]).permute(2, 0, 1).float() / 255)
    np.testing.assert_array_equal(sim.last_final_states[0], obs["state"])
    assert moved > 0.05  # the handle really moved during those steps (contact was exercised)
    env.close()
