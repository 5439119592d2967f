import numpy as np
import pytest

pytestmark = pytest.mark.mujoco

from envs.mt50_eval import ExpertPolicyFactory, evaluate_policy, summarize, held_out_variation  # noqa: E402


class StillPolicy:
    """Never moves: must fail a reaching task."""

    def reset(self):
        self.calls = 0

    def select_action(self, observation):
        assert observation["image"].shape == (16, 16, 3) and observation["image"].dtype == np.uint8
        return np.zeros(4, np.float32)


class StillFactory:
    def __call__(self, task):
        return StillPolicy()


def test_held_out_variations_are_test_split():
    from envs.demos import split_of

    assert [split_of(held_out_variation(i)) for i in range(5)] == ["test"] * 5
    assert len({held_out_variation(i) for i in range(10)}) == 10


def test_scripted_experts_score_full_success_and_idle_policy_fails():
    tasks = ["reach-v3", "drawer-close-v3"]
    results = evaluate_policy(ExpertPolicyFactory(), tasks=tasks, trials=2, image_size=16, workers=0,
                              record_videos=1, progress=False)
    summary = summarize(results)
    assert summary["mean_success"] == 1.0
    assert summary["per_task"]["reach-v3"]["trials"] == 2
    # Episodes stop at the first success; the recorded rollout holds every frame up to it.
    first = results[0]
    assert first.success and first.frames.shape == (first.steps + 1, 16, 16, 3)
    assert results[1].frames is None

    idle = summarize(evaluate_policy(StillFactory(), tasks=["reach-v3"], trials=1, image_size=16, max_steps=30,
                                     workers=0, progress=False))
    assert idle["mean_success"] == 0.0
    assert idle["episodes"][0]["steps"] == 30


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown MT50 task"):
        evaluate_policy(ExpertPolicyFactory(), tasks=["fly-to-the-moon-v3"], workers=0)


class BatchedExpert:
    """The scripted expert behind a batched interface: one action per row of a batch of observations."""

    supports_batched_observations = True

    def __init__(self, task):
        from envs.metaworld import expert_policy

        self._act = expert_policy(task)
        self.batch_sizes = []

    def reset(self, env_ids=None):
        pass

    def select_action(self, observation):
        state = observation["state"]
        if observation["image"].ndim == 3:
            return self._act(state)
        self.batch_sizes.append(len(state))
        return np.stack([self._act(s) for s in state])


class BatchedExpertFactory:
    def __call__(self, task):
        return BatchedExpert(task)


def test_batched_envs_give_the_same_episodes_as_one_env_at_a_time():
    # max_steps 45 cuts some expert episodes short: episodes of different lengths refill the batch at different times
    kw = dict(tasks=["reach-v3"], trials=5, image_size=16, max_steps=45, workers=0, record_videos=5, progress=False)
    serial = evaluate_policy(BatchedExpertFactory(), envs_per_worker=1, **kw)
    from envs import mt50_eval

    batched = evaluate_policy(BatchedExpertFactory(), envs_per_worker=3, **kw)
    policy = mt50_eval._WORKER["policies"]["reach-v3"]
    assert policy.batch_sizes and set(policy.batch_sizes) == {3}  # one call per step for three envs
    assert 0 < sum(r.success for r in serial) < 5  # both outcomes occur, so episode lengths differ
    for a, b in zip(serial, batched):
        assert (a.trial, a.variation_seed, a.success, a.steps) == (b.trial, b.variation_seed, b.success, b.steps)
        np.testing.assert_array_equal(a.frames, b.frames)  # each episode saw exactly its own frames
    with pytest.raises(ValueError, match="envs_per_worker"):
        evaluate_policy(BatchedExpertFactory(), envs_per_worker=0, **kw)
