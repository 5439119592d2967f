"""Interaction data for world models: exploration policies, policy mixtures, collection, planning-variation guard."""

import json

import numpy as np
import pytest

from envs.interaction import (PLANNING_VARIATION_START, NoisyExpertPolicy, PolicyConfig, PolicyMixture,
                              RandomPolicy, check_training_variation, count_policies, episode_rng,
                              planning_variations)

TASK = "reach-v3"
TINY = dict(tasks=[TASK], image_size=16, workers=0, progress=False, episode_steps=6)


def runs(actions):
    """Lengths of the runs of identical consecutive actions."""
    out, n = [], 1
    for a, b in zip(actions[:-1], actions[1:]):
        if np.array_equal(a, b):
            n += 1
        else:
            out.append(n)
            n = 1
    return out + [n]


# --------------------------------------------------------------------------------------------- no simulator


def test_planning_variations_and_guard():
    assert planning_variations(3) == [10_000, 10_001, 10_002] and PLANNING_VARIATION_START == 10_000
    check_training_variation(PLANNING_VARIATION_START - 1)
    with pytest.raises(ValueError, match="reserved for the planning benchmark"):
        check_training_variation(planning_variations(1)[0])


def test_mixture_fractions_are_exact_and_prefix_stable():
    m = PolicyMixture.parse("random:0.4, expert:0.2,noisy:0.4")
    assert str(m) == "expert:0.2,noisy:0.4,random:0.4" and str(PolicyMixture.parse("random")) == "random"
    first40 = m.assign(40)
    assert count_policies(first40) == {"expert": 8, "noisy": 16, "random": 16}
    assert m.assign(1000)[:40] == first40 and m.policy_of(37) == first40[37]  # resume/enlarge-safe
    test_policies = count_policies([m.assign(1000)[v] for v in range(9, 1000, 10)])
    assert set(test_policies) == {"expert", "noisy", "random"}  # the test split is not one policy's
    for bad, msg in [("foo", "unknown policy"), ("expert:0.5,random:0.2", "sum to"), ("expert,random", "fraction"),
                     ("random:0.5,random:0.5", "twice"), ("", "empty")]:
        with pytest.raises(ValueError, match=msg):
            PolicyMixture.parse(bad)


def test_policies_hold_and_noise():
    rng = np.random.default_rng(0)
    rand = RandomPolicy(rng=rng, hold_min=1, hold_max=5)
    acts = np.stack([rand(None) for _ in range(400)])
    assert acts.dtype == np.float32 and acts.shape == (400, 4) and np.abs(acts).max() <= 1
    lengths = runs(acts)
    assert max(lengths) <= 5 and set(lengths[:-1]) == {1, 2, 3, 4, 5} and 2.5 < np.mean(lengths) < 3.5

    zero = lambda s: np.zeros(4, np.float32)  # noqa: E731
    quiet = NoisyExpertPolicy(zero, rng=np.random.default_rng(1), noise_std=0.0, random_prob=0.0)
    assert all(np.array_equal(quiet(None), np.zeros(4)) for _ in range(20))  # wraps the expert exactly
    noisy = NoisyExpertPolicy(zero, rng=np.random.default_rng(1), noise_std=0.3, random_prob=0.0)
    std = np.stack([noisy(None) for _ in range(2000)]).std(0)
    np.testing.assert_allclose(std, 0.3, rtol=0.1)
    held = NoisyExpertPolicy(zero, rng=np.random.default_rng(2), noise_std=0.0, random_prob=0.1)
    acts = np.stack([held(None) for _ in range(2000)])
    random_steps = np.any(acts != 0, axis=1)
    assert 0.15 < random_steps.mean() < 0.35  # p / (p + 1/E[k]) = 0.1 * 3 / (1 + 0.1 * 3) ~ 0.23
    assert max(runs(acts[random_steps])) <= 5  # each random action is held at most hold_max steps
    with pytest.raises(ValueError, match="hold_min"):
        PolicyConfig(hold_min=3, hold_max=2)


# --------------------------------------------------------------------------------------------- collection

pytest.importorskip("metaworld")


@pytest.mark.mujoco
@pytest.mark.parametrize("policy", ["expert", "noisy", "random"])
def test_collect_each_policy(tmp_path, policy):
    from envs.demos import SUCCESS_TAIL, collect_demos
    from foresight.data.episodes import EpisodeDataset, read_manifest, read_meta

    summary = collect_demos(tmp_path, demos_per_task=2, policy=policy, **TINY)
    recs = read_manifest(tmp_path, include_failed=True)
    assert [r.extra["policy"] for r in recs] == [policy, policy] and summary.per_task[TASK]["policies"] == {policy: 2}
    meta = read_meta(tmp_path)
    assert meta["policy"] == policy and ("episode_steps" in meta) == (policy != "expert")
    ds = EpisodeDataset(tmp_path)
    assert len(ds) == 2  # the reach expert succeeds on both; noisy and random episodes are always kept
    for ep, r in zip(ds, recs):
        assert ep["frames"].shape[1:] == (16, 16, 3) and np.abs(ep["actions"]).max() <= 1
        if policy == "expert":
            assert r.length == r.first_success + SUCCESS_TAIL + 1 and r.extra["policy_params"] == {}
        else:
            assert r.length == 7 and ep["actions"].shape == (6, 4) and r.extra["seed"] == 0
            assert r.extra["policy_params"] == PolicyConfig().params(policy)
    if policy == "random":  # the recorded actions are the policy's, held
        for ep in ds:
            ref = RandomPolicy(rng=episode_rng(0, TASK, ep["variation"]))
            np.testing.assert_array_equal(ep["actions"], np.stack([ref(None) for _ in range(6)]))
            assert max(runs(ep["actions"])) <= 5


@pytest.mark.mujoco
def test_mixture_resume_and_config_clash(tmp_path):
    from envs.demos import CollectionConfigError, collect_demos
    from foresight.data.episodes import MANIFEST, read_manifest

    kw = dict(demos_per_task=3, policy="noisy:0.5,random:0.5", **TINY)
    first = collect_demos(tmp_path, max_jobs=1, **kw)
    assert first.new_episodes == 1
    again = collect_demos(tmp_path, **kw)
    assert again.skipped == 1 and again.new_episodes == 2
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert sorted(json.loads(line)["variation"] for line in lines) == [0, 1, 2]  # each episode once
    want = PolicyMixture.parse(kw["policy"]).assign(3)
    assert [r.extra["policy"] for r in sorted(read_manifest(tmp_path), key=lambda r: r.variation)] == want
    for change in [dict(policy="random"), dict(episode_steps=8), dict(seed=1)]:
        with pytest.raises(CollectionConfigError, match="different settings"):
            collect_demos(tmp_path, **{**kw, **change})
    with pytest.raises(CollectionConfigError, match="reserved for the planning benchmark"):
        collect_demos(tmp_path / "new", **{**kw, "demos_per_task": PLANNING_VARIATION_START + 1})
    assert not (tmp_path / "new").exists()


@pytest.mark.mujoco
def test_same_seed_same_actions(tmp_path):
    from envs.demos import collect_demos
    from foresight.data.episodes import EpisodeDataset

    def actions(name, seed):
        collect_demos(tmp_path / name, demos_per_task=2, policy="noisy", seed=seed, **TINY)
        return [ep["actions"] for ep in EpisodeDataset(tmp_path / name)]

    a, b, c = actions("a", 0), actions("b", 0), actions("c", 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.mujoco
def test_cli_help_and_bad_options(tmp_path, capsys):
    from experiments import collect_metaworld
    from experiments.collect_metaworld import Args, main
    from experiments.common import cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(main, Args, collect_metaworld.__doc__, argv=["--help"])
    assert e.value.code == 0 and "--policy" in capsys.readouterr().out
    for bad in (["--policy", "expert:0.3"], ["--tasks", "nope-v3"], ["--episodes-per-task", "10001"]):
        with pytest.raises(SystemExit) as e:
            cli_main(main, Args, argv=["--out", str(tmp_path / "x"), "--no-progress", *bad])
        assert e.value.code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
