"""Closed-loop visual MPC: a toy point-mass env, a perfect toy world model, and foresight's tiny models."""

import numpy as np
import pytest
import torch

from agents.mpc import GripperHeuristic, RandomActionAgent, SubgoalSchedule, VisualMPC, image_to_tensor, run_episode
from agents.optimizers import CEM, MPPI, RandomShooting
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig, CopyLastConfig, CopyLastFrame
from foresight.world_model import WorldModel

SIZE = 16
YY, XX = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")


def render(pos):
    """A Gaussian blob at pos [..., 2] (x, y) in pixels -> frames [..., 3, SIZE, SIZE] in [0, 1]."""
    x, y = pos[..., 0, None, None], pos[..., 1, None, None]
    img = torch.exp(-((XX - x) ** 2 + (YY - y) ** 2) / (2 * 1.5**2))
    return img[..., None, :, :].expand(*img.shape[:-2], 3, SIZE, SIZE)


class PointEnv:
    """Gymnasium-style toy: a blob moved by actions (dx, dy) in [-1, 1] pixels; obs {'image', 'state'}."""

    def __init__(self, start=(4.0, 4.0)):
        self.start = np.asarray(start, np.float32)

    def _obs(self):
        img = (render(torch.from_numpy(self.pos)) * 255).round().byte().permute(1, 2, 0).numpy()
        return {"image": img, "state": np.array([*self.pos, 0.0], np.float64)}

    def reset(self, **kw):
        self.pos = self.start.copy()
        return self._obs(), {}

    def step(self, action):
        assert action.shape == (2,) and np.all(np.abs(action) <= 1 + 1e-6)
        self.pos = np.clip(self.pos + action, 1.5, SIZE - 2.5).astype(np.float32)
        return self._obs(), 0.0, False, False, {"success": float(np.linalg.norm(self.pos - GOAL) < 1.0)}


GOAL = np.array([11.0, 9.0], np.float32)


class PointModel(WorldModel):
    """A perfect model of PointEnv: reads the blob position from the last frame (centroid) and integrates."""

    config_class = CopyLastConfig

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        img = context_frames[:, -1, 0]  # [B, H, W]
        w = img / img.sum((1, 2), keepdim=True)
        pos = torch.stack([(w * XX).sum((1, 2)), (w * YY).sum((1, 2))], -1)  # [B, 2]
        traj = (pos[:, None] + actions.cumsum(1)).clamp(1.5, SIZE - 2.5)  # [B, T, 2]
        return render(traj)[:, None].expand(-1, num_samples, -1, -1, -1, -1).clone()

    def loss(self, batch):
        raise RuntimeError


def point_model():
    return PointModel(CopyLastConfig(image_size=SIZE, action_dim=2, context_frames=2))


def goal_image():
    return render(torch.from_numpy(GOAL))


def final_distance(ep):
    env_img = torch.from_numpy(ep["frames"][-1]).float()[..., 0] / 255
    w = env_img / env_img.sum()
    pos = np.array([float((w * XX).sum()), float((w * YY).sum())])
    return float(np.linalg.norm(pos - GOAL))


@pytest.mark.parametrize("opt", [CEM(num_samples=60, iterations=3), MPPI(num_samples=60, iterations=3)],
                         ids=["cem", "mppi"])
def test_mpc_with_perfect_model_reaches_goal_and_beats_random(opt):
    agent = VisualMPC(point_model(), opt, horizon=5, action_low=-np.ones(2), action_high=np.ones(2),
                      cost="pixel", cost_weighting="all", seed=0)
    ep = run_episode(PointEnv(), agent, goal_image(), max_steps=14)
    assert ep["frames"].shape == (15, SIZE, SIZE, 3) and ep["actions"].shape == (14, 2)
    assert final_distance(ep) < 1.0 and ep["success"][-1] == 1.0
    rand = run_episode(PointEnv(), RandomActionAgent(action_low=-np.ones(2), action_high=np.ones(2), seed=0),
                       goal_image(), max_steps=14)
    assert final_distance(rand) > 3.0
    # one plan per step, each with its imagined video [H, h, w, 3]
    assert len(agent.records) == 14 and agent.records[0].imagined.shape == (5, SIZE, SIZE, 3)
    assert agent.records[0].evaluations in (180, 181)  # MPPI scores its final mean once more


def test_replan_interval_action_repeat_and_warm_start():
    model = point_model()
    init_means = []

    class Spy(RandomShooting):
        def optimize(self, objective, **kw):
            init_means.append(kw["init_mean"])
            return super().optimize(objective, **kw)

    agent = VisualMPC(model, Spy(num_samples=30), horizon=6, action_low=-np.ones(2),
                      action_high=np.ones(2), replan_every=3, action_repeat=2, seed=1)
    ep = run_episode(PointEnv(), agent, goal_image(), max_steps=7)
    assert [r.step for r in agent.records] == [0, 3, 6]
    plan0 = agent.records[0].actions
    assert np.array_equal(ep["actions"][:3], plan0[:3])  # the first 3 actions of each plan are executed
    assert np.array_equal(plan0[0], plan0[1]) and np.array_equal(plan0[2], plan0[3])  # held 2 steps each
    # the second plan starts from the first shifted by the replan interval (3), in distinct-action space
    p = torch.from_numpy(plan0)
    shifted = torch.cat([p[3:], p[-1:].expand(3, -1)])  # [6, 2]
    assert init_means[0] is None
    assert torch.allclose(init_means[1], shifted.view(3, 2, 2).mean(1))


def test_runs_end_to_end_with_tiny_conv_model_and_context_padding():
    torch.manual_seed(0)
    cfg = ConvPredictorConfig(**{**ConvPredictorConfig.PRESETS["tiny"], "action_dim": 2, "context_frames": 2})
    model = ConvPredictor(cfg).eval()
    agent = VisualMPC(model, CEM(num_samples=16, iterations=2, min_elites=4), horizon=3, action_low=-np.ones(2),
                      action_high=np.ones(2), cost="embedding", predict_batch_size=5, seed=0)
    ep = run_episode(PointEnv(), agent, goal_image(), max_steps=4)
    assert ep["actions"].shape == (4, 2) and np.all(np.abs(ep["actions"]) <= 1)
    assert agent.context_tensor().shape == (2, 3, SIZE, SIZE)
    assert agent.records[-1].imagined.shape == (3, SIZE, SIZE, 3)
    # determinism: the same seed gives the same actions
    agent2 = VisualMPC(model, CEM(num_samples=16, iterations=2, min_elites=4), horizon=3, action_low=-np.ones(2),
                       action_high=np.ones(2), cost="embedding", predict_batch_size=5, seed=0)
    assert np.array_equal(run_episode(PointEnv(), agent2, goal_image(), max_steps=4)["actions"], ep["actions"])


def test_copy_last_with_resizing_and_gripper_heuristic():
    # A 3-d action space whose last dim is scripted; the observation (16 px) is resized to the model's 8 px.
    model = CopyLastFrame(CopyLastConfig(image_size=8, action_dim=3, context_frames=1))
    grip = GripperHeuristic(action_index=2, state_index=0, z_threshold=5.0, closed=1.0, open=-1.0)
    agent = VisualMPC(model, CEM(num_samples=8, iterations=1, min_elites=2), horizon=2,
                      action_low=-np.ones(3), action_high=np.ones(3), gripper=grip, seed=0)
    assert agent.planner.action_dim == 2
    env = PointEnv()
    obs, _ = env.reset()
    agent.reset(goal_image())
    a = agent.act(obs)  # x = 4 < 5: closed
    assert a.shape == (3,) and a[2] == 1.0 and agent.records[0].actions[:, 2].tolist() == [1.0, 1.0]
    obs["state"][0] = 8.0
    assert agent.act(obs)[2] == -1.0
    with pytest.raises(RuntimeError, match="reset"):
        VisualMPC(model, CEM(num_samples=8), horizon=2, action_low=-np.ones(3), action_high=np.ones(3)).act(obs)


def test_image_to_tensor():
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 255
    x = image_to_tensor(img, 8)
    assert x.shape == (3, 8, 8) and float(x[0].min()) > 0.99 and float(x[1].max()) == 0
    with pytest.raises(ValueError, match="H, W, 3"):
        image_to_tensor(np.zeros((3, 16, 16), np.uint8))


# ---------------------------------------------------------------------------------------------- the recorded video
class NoisyPointModel(PointModel):
    """PointModel plus a random kick per step, drawn for the whole batch at once (as GHVAE draws its latents):
    with the same seed, a candidate's sample depends on its position in the batch and the batch size."""

    def _predict(self, context_frames, actions, num_samples, generator, horizon):
        img = context_frames[:, -1, 0]
        w = img / img.sum((1, 2), keepdim=True)
        pos = torch.stack([(w * XX).sum((1, 2)), (w * YY).sum((1, 2))], -1)[:, None]  # [B, 1, 2]
        pos = pos.expand(-1, num_samples, -1)
        out = []
        for t in range(horizon):
            kick = torch.randn(pos.shape, generator=generator) * 1.5  # [B, S, 2]
            pos = (pos + actions[:, t, None] + kick).clamp(1.5, SIZE - 2.5)
            out.append(render(pos))
        return torch.stack(out, 2)  # [B, S, T, 3, H, W]

    def embed(self, frames):
        return frames.flatten(-3)  # [..., 3 * H * W]


class NoisyLatentModel(NoisyPointModel):
    """Overrides predict_embeddings (as HARP does, skipping its decoder), so the agent cannot keep frames."""

    def predict_embeddings(self, context_frames, actions=None, num_samples=1, *, horizon=None, generator=None,
                           seed=None):
        return self.embed(self.predict(context_frames, actions, num_samples, horizon=horizon, seed=seed))


class DecodingLatentModel(NoisyLatentModel):
    def decode_embeddings(self, embeddings):
        return embeddings.unflatten(-1, (3, SIZE, SIZE))


def noisy_model(cls=NoisyPointModel):
    return cls(CopyLastConfig(image_size=SIZE, action_dim=2, context_frames=2))


@pytest.mark.parametrize("cls,cost", [(NoisyPointModel, "pixel"), (NoisyPointModel, "embedding"),
                                      (NoisyLatentModel, "embedding"), (DecodingLatentModel, "embedding")],
                         ids=["pixel", "embedding_from_frames", "embedding_redecoded", "embedding_decode_hook"])
def test_recorded_imagined_video_is_the_sample_the_planner_scored(cls, cost):
    # The record used to be a fresh batch-1 prediction: for a stochastic model another future than the scored one.
    model = noisy_model(cls)
    agent = VisualMPC(model, CEM(num_samples=20, iterations=2, min_elites=4), horizon=4, action_low=-np.ones(2),
                      action_high=np.ones(2), cost=cost, cost_weighting="all", predict_batch_size=7, seed=3)
    env = PointEnv()
    obs, _ = env.reset()
    context = torch.stack([image_to_tensor(obs["image"])] * 2)  # [2, 3, H, W]
    actions, video = agent.plan_from(context, goal_image())
    rec = agent.records[-1]
    assert video.shape == (4, 3, SIZE, SIZE) and np.array_equal(rec.imagined, (video.movedim(1, -1) * 255).round().byte().numpy())
    score = lambda frames: float(agent.cost(frames[None, None] if cost == "pixel" else model.embed(frames[None, None])))  # noqa: E731
    assert score(video) == pytest.approx(rec.cost, rel=1e-5)
    fresh = model.predict(context[None], actions[None], seed=3)[0, 0]  # what used to be recorded
    assert score(fresh) != pytest.approx(rec.cost, rel=1e-3)


def test_record_model_still_renders_the_recorded_video():
    recorder = point_model()  # a separate (here deterministic) record model, e.g. a simulator view
    agent = VisualMPC(noisy_model(), RandomShooting(num_samples=10), horizon=3, action_low=-np.ones(2),
                      action_high=np.ones(2), record_model=recorder, seed=0)
    ep = run_episode(PointEnv(), agent, goal_image(), max_steps=1)
    ctx = torch.from_numpy(ep["frames"][0]).permute(2, 0, 1).float()[None, None].expand(1, 2, -1, -1, -1) / 255
    expected = recorder.predict(ctx, torch.from_numpy(agent.records[0].actions)[None], seed=0)[0, 0]
    assert np.array_equal(agent.records[0].imagined, (expected.movedim(1, -1) * 255).round().byte().numpy())


def test_recorded_video_of_a_latent_rollout_is_the_scored_sample():
    # GHVAE scores candidates in model space (no pixels); the record is the pixel rollout of the chosen plan's
    # scored latent sample, not a fresh pixel prediction (which re-encodes frames and draws other noise).
    from foresight.config import preset
    from foresight.models.ghvae import GHVAE, GHVAEConfig

    torch.manual_seed(0)
    model = GHVAE(preset(GHVAEConfig, "tiny")).set_stage("module2").eval()
    torch.nn.init.normal_(model.stack[0].decoder.out[-1].weight, std=0.2)
    agent = VisualMPC(model, CEM(num_samples=12, iterations=2, min_elites=3), horizon=3, action_low=-np.ones(4),
                      action_high=np.ones(4), cost="embedding", cost_weighting="all", seed=2, record=True)
    rng = np.random.default_rng(0)
    goal = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    obs = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    agent.reset(goal)
    agent.act(obs)
    rec = agent.records[0]
    ctx = torch.stack([image_to_tensor(obs)] * 2)[None]  # [1, 2, 3, 16, 16]
    plan = torch.from_numpy(rec.actions)[None]
    expected = model.predict_embedding_frames(ctx, plan, seed=2)[0, 0]
    assert np.array_equal(rec.imagined, (expected.movedim(1, -1) * 255).round().byte().numpy())
    assert float(agent.cost(model.predict_embeddings(ctx, plan, seed=2))) == pytest.approx(rec.cost, rel=1e-4)


def test_rest_action_reaches_the_planner_without_the_scripted_gripper_dim():
    model = CopyLastFrame(CopyLastConfig(image_size=8, action_dim=3, context_frames=1))
    grip = GripperHeuristic(action_index=2, state_index=0, z_threshold=5.0, closed=1.0, open=-1.0)
    agent = VisualMPC(model, CEM(num_samples=8, iterations=1, min_elites=2), horizon=2, action_low=-np.ones(3),
                      action_high=np.ones(3), gripper=grip, rest_action=[0.25, -0.5, 1.0], seed=0)
    assert agent.planner.rest_action.tolist() == [0.25, -0.5]
    assert VisualMPC(model, CEM(num_samples=8), horizon=2, action_low=-np.ones(3),
                     action_high=np.ones(3)).planner.rest_action is None


def test_run_episode_can_stop_at_the_first_success():
    class Scripted:  # walks straight at the goal, one pixel per step along each axis
        records = []

        def reset(self, goal):
            pass

        def act(self, obs):
            return np.clip(GOAL - obs["state"][:2], -1.0, 1.0).astype(np.float32)

    full = run_episode(PointEnv(), Scripted(), goal_image(), max_steps=12)
    first = int(np.argmax(full["success"]) + 1)
    assert full["success"].any() and first < 12 and len(full["actions"]) == 12
    stopped = run_episode(PointEnv(), Scripted(), goal_image(), max_steps=12, stop_on_success=True)
    assert len(stopped["actions"]) == first and stopped["success"][-1] == 1.0 and stopped["success"][:-1].max() == 0
    assert np.array_equal(stopped["actions"], full["actions"][:first])
    assert len(stopped["frames"]) == first + 1


def blob_positions(ep):
    img = torch.from_numpy(ep["frames"]).float()[..., 0] / 255  # [T+1, H, W]
    w = img / img.sum((1, 2), keepdim=True)
    return np.stack([(w * XX).sum((1, 2)).numpy(), (w * YY).sum((1, 2)).numpy()], -1)  # [T+1, 2]


def test_subgoal_schedule_visits_each_subgoal_in_order_then_the_goal():
    def agent():
        return VisualMPC(point_model(), CEM(num_samples=60, iterations=3), horizon=4, action_low=-np.ones(2),
                         action_high=np.ones(2), cost="pixel", cost_weighting="all", seed=0)

    detour = [(3.0, 12.0), (8.0, 13.0)]  # a way round, well off the straight line from (4, 4) to the goal (11, 9)
    subgoals = [render(torch.tensor(p)) for p in detour]
    schedule = SubgoalSchedule(agent(), subgoals, max_steps_each=20, advance_fraction=0.1)
    ep = run_episode(PointEnv(), schedule, goal_image(), max_steps=40)
    pos = blob_positions(ep)
    near = [int(np.argmin(np.linalg.norm(pos - np.asarray(p), axis=1))) for p in detour]
    assert all(np.linalg.norm(pos[i] - np.asarray(p)) < 1.5 for i, p in zip(near, detour))  # passed by each
    assert near[0] < near[1]  # in order
    assert len(schedule.switch_steps) == 2 and schedule.switch_steps[0] < schedule.switch_steps[1] < 40
    assert schedule.index == 2 and torch.equal(schedule.agent.goal_image, goal_image())
    assert final_distance(ep) < 1.0  # and then the goal
    plain = run_episode(PointEnv(), agent(), goal_image(), max_steps=40)  # straight there, never near the detour
    assert min(np.linalg.norm(blob_positions(plain) - np.asarray(detour[0]), axis=1)) > 4.0


def test_subgoal_schedule_holds_each_subgoal_until_its_not_before_step():
    class AtEveryGoal:  # its cost to any goal is 0 from the start: the cost test alone passes at once
        records = []

        def reset(self, goal, obs=None):
            self.goal = goal

        def set_goal(self, goal):
            self.goal = goal

        def goal_distance(self, obs):
            return 0.0

        def act(self, obs):
            return np.zeros(2, np.float32)

    subgoals = [render(torch.tensor([3.0, 12.0])), render(torch.tensor([8.0, 13.0]))]
    free = SubgoalSchedule(AtEveryGoal(), subgoals, max_steps_each=50, advance_fraction=0.2)
    run_episode(PointEnv(), free, goal_image(), max_steps=12)
    assert free.switch_steps == [0, 0]  # both left before the first action
    held = SubgoalSchedule(AtEveryGoal(), subgoals, max_steps_each=50, advance_fraction=0.2, not_before=[5, 9])
    run_episode(PointEnv(), held, goal_image(), max_steps=12)
    assert held.switch_steps == [5, 9] and torch.equal(held.agent.goal, goal_image())
    timed = SubgoalSchedule(AtEveryGoal(), subgoals, max_steps_each=3, advance_fraction=0.2, not_before=[5, 9])
    run_episode(PointEnv(), timed, goal_image(), max_steps=12)
    assert timed.switch_steps == [3, 6]  # the timeout (3 steps each) still moves on before not_before
    with pytest.raises(ValueError, match="one step index >= 0 per subgoal"):
        SubgoalSchedule(AtEveryGoal(), subgoals, max_steps_each=3, not_before=[5])


def test_subgoal_schedule_moves_on_when_a_subgoal_takes_too_long():
    agent = VisualMPC(point_model(), CEM(num_samples=20, iterations=1), horizon=3, action_low=-np.ones(2),
                      action_high=np.ones(2), cost="pixel", replan_every=3, seed=0)
    far = [render(torch.tensor([13.0, 2.0])), render(torch.tensor([2.0, 13.0]))]
    schedule = SubgoalSchedule(agent, far, max_steps_each=4, advance_fraction=0.0)  # never close enough
    run_episode(PointEnv(), schedule, goal_image(), max_steps=12)
    assert schedule.switch_steps == [4, 8]
    steps = [r.step for r in agent.records]
    assert 4 in steps and 8 in steps  # a new goal replans at once, whatever the replanning interval
    assert agent.t == 12 and len(agent.context) == 2  # the episode state survived the switches
    with pytest.raises(ValueError, match="max_steps_each"):
        SubgoalSchedule(agent, far, max_steps_each=0)
    with pytest.raises(RuntimeError, match="reset"):
        VisualMPC(point_model(), CEM(num_samples=4), horizon=2, action_low=-np.ones(2),
                  action_high=np.ones(2)).set_goal(goal_image())


@pytest.mark.parametrize("cost", ["pixel", "embedding"])
def test_goal_distance_is_the_planners_cost_of_the_observed_frame(cost):
    agent = VisualMPC(noisy_model(), CEM(num_samples=4), horizon=2, action_low=-np.ones(2),
                      action_high=np.ones(2), cost=cost)
    agent.reset(goal_image())
    at_goal = (goal_image() * 255).round().byte().permute(1, 2, 0).numpy()  # uint8 [H, W, 3] observation
    start = PointEnv().reset()[0]
    assert agent.goal_distance(at_goal) < 1e-3 < agent.goal_distance(start)
    frame = image_to_tensor(start["image"])
    expected = (frame - goal_image()).pow(2).sum()  # both costs are summed squared errors here (embed = flatten)
    assert agent.goal_distance(start) == pytest.approx(float(expected), rel=1e-5)
