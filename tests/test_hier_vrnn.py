"""Hier-VRNN: KL per level, the KL warm-up counter, action conditioning (wiring and a trained model that moves
the square the way its actions say), seeded sampling, save/load, training (loop, Trainer, script), planners and
the WorldModel's input checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import foresight
from foresight.config import ConfigError, preset
from foresight.models.hier_vrnn import HierVRNN, HierVRNNConfig, gaussian_kl, pyramid_sizes
from foresight.registry import MODELS, get_model_class
from foresight.testing import SyntheticClips
from foresight.train import TrainConfig, Trainer

torch.set_num_threads(1)

SIZE, SQUARE, BACKGROUND = 16, 4, 0.1
COLOUR = torch.tensor([0.9, 0.8, 0.3])  # SyntheticClips' square


def tiny_config(**changes) -> HierVRNNConfig:
    return dataclasses.replace(preset(HierVRNNConfig, "tiny"), **changes)


def make_model(seed: int = 0, **changes) -> HierVRNN:
    torch.manual_seed(seed)
    return HierVRNN(tiny_config(**changes))


def clip_batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """``frames [n, 5, 3, 16, 16]``, ``actions [n, 4, 4]``: a square moved by its actions (2 context + 3)."""
    ds = SyntheticClips(n, context_frames=2, future_frames=3, image_size=SIZE, square=SQUARE, seed=seed)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


def train_steps(model: HierVRNN, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def context_and_actions(batch: dict, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    frames, actions = batch["frames"][:n], batch["actions"][:n]
    return frames[:, :2], actions[:, 1:]  # actions[:, 1] moves the last context frame


# ---------------------------------------------------------------------------------------------- config and shapes
def test_registered_presets_and_pyramid():
    assert get_model_class("hier_vrnn") is HierVRNN and "hier_vrnn" in foresight.available_models()
    assert MODELS.builtin["hier_vrnn"] == "foresight.models.hier_vrnn"  # found by name from a fresh process
    for name in ("tiny", "quick", "paper"):
        cfg = preset(HierVRNNConfig, name)
        assert cfg.latent_sizes[0] == 1 and list(cfg.latent_sizes) == sorted(cfg.latent_sizes)
        assert set(cfg.latent_sizes) | set(cfg.decoder_sizes) <= set(pyramid_sizes(cfg))
    paper = preset(HierVRNNConfig, "paper")
    assert (paper.image_size, paper.context_frames, paper.future_frames) == (64, 2, 10)
    assert paper.latent_sizes == (1, 8, 32) and paper.decoder_sizes == (1, 4, 8, 16, 32, 64)
    assert preset(HierVRNNConfig, "quick").image_size == 64
    model = make_model()
    assert model.stages == ("all",) and model.num_levels == 2
    feats = model.encode(torch.rand(3, 3, SIZE, SIZE))
    assert {r: tuple(f.shape) for r, f in feats.items()} == {16: (3, 8, 16, 16), 8: (3, 16, 8, 8),
                                                              4: (3, 16, 4, 4), 1: (3, 16, 1, 1)}
    with pytest.raises(ConfigError, match="frame pyramid"):
        tiny_config(latent_sizes=(1, 6))
    with pytest.raises(ConfigError, match="strictly increasing"):
        tiny_config(latent_sizes=(4, 1))
    with pytest.raises(ConfigError, match="same length"):
        tiny_config(latent_channels=(4,))


# ---------------------------------------------------------------------------------------------- KL
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(5, 3, generator=g) for _ in range(4))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mq, lq.exp()),
                                                 torch.distributions.Normal(mp, lp.exp()))
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), expected)
    assert torch.count_nonzero(gaussian_kl(mq, lq, mq, lq)) == 0


@pytest.mark.parametrize("level", [0, 1])
def test_kl_is_zero_at_a_level_whose_posterior_equals_its_prior(level):
    """With the posterior of one level set to a copy of its prior, the two see the same inputs on a clip that
    does not move (x_t == x_{t-1}), so that level's KL is exactly zero and the other level's is not; on a moving
    clip the prior (which sees x_{t-1}) and the posterior (which sees x_t) differ again."""
    model = make_model()
    model.posterior[level].load_state_dict(model.prior[level].state_dict())
    moving = clip_batch()
    still = dict(moving, frames=moving["frames"][:, :1].expand_as(moving["frames"]).clone())
    with torch.no_grad():
        _, metrics = model.loss(still)
        _, moved = model.loss(moving)
    other = 1 - level
    assert metrics[f"kl{level}"] == 0.0, metrics
    assert metrics[f"kl{other}"] > 1e-4, metrics
    assert moved[f"kl{level}"] > 1e-4, moved
    assert metrics["kl"] == pytest.approx(metrics["kl0"] + metrics["kl1"], rel=1e-5)


def test_kl_warmup_schedule_and_its_step_counter(tmp_path):
    model = make_model(kl_weight=0.5, kl_warmup_steps=10)
    assert [model.kl_beta(s) for s in (0, 5, 10, 20)] == [0.0, 0.25, 0.5, 0.5]
    assert make_model(kl_weight=0.5, kl_warmup_steps=0).kl_beta(0) == 0.5
    batch = clip_batch()
    pixels = 3 * SIZE * SIZE
    model.train()
    for step in range(3):  # each training call uses beta at the count before it, then counts itself
        assert int(model.train_step) == step
        loss, m = model.loss(batch)
        assert m["beta"] == model.kl_beta(step)
        assert float(loss.detach()) == pytest.approx(m["mse"] + m["beta"] * m["kl"] / pixels, rel=1e-5)
    assert int(model.train_step) == 3
    model.loss(batch)[0].backward()
    assert int(model.train_step) == 4
    with torch.no_grad():  # evaluation (the Trainer's evaluate runs under no_grad, in eval mode) does not count
        model.loss(batch)
    model.eval()
    model.loss(batch)
    assert int(model.train_step) == 4
    model.train_step.fill_(10)  # past the warm-up: the full weight, and the KL really enters the loss
    model.train()
    loss, m = model.loss(batch)
    assert m["beta"] == 0.5 and m["kl"] > 0
    loss = float(loss.detach())
    assert loss == pytest.approx(m["mse"] + 0.5 * m["kl"] / pixels, rel=1e-5) and loss > m["mse"]
    # The counter is a buffer: saved with the weights, so a resumed or reloaded model continues the warm-up.
    model.save_pretrained(tmp_path / "m")
    assert int(foresight.load(tmp_path / "m").train_step) == 11


def test_trainer_steps_drive_the_warmup(tmp_path):
    model = make_model(kl_warmup_steps=8)
    clips = SyntheticClips(16, context_frames=2, future_frames=3, image_size=SIZE, square=SQUARE)
    config = dataclasses.replace(preset(TrainConfig, "tiny"), steps=3, batch_size=4, grad_accum=2, progress=False,
                                 log_every=1)
    Trainer(model, clips, config=config, run_dir=tmp_path / "run").fit()
    assert int(model.train_step) == 6  # micro-batches: 3 optimizer steps x 2
    assert model.kl_beta() == pytest.approx(0.75)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["beta"], 4) for r in lines if r["split"] == "train"] == [0.0625, 0.3125, 0.5625]


# ---------------------------------------------------------------------------------------------- actions
def test_actions_enter_the_prior_and_the_decoder_recurrence():
    model = make_model().eval()
    feats = model.encode(torch.rand(2, 3, SIZE, SIZE))
    context = {r: torch.stack([f, f], dim=1) for r, f in feats.items()}  # [2, C=2, Ch, r, r]
    prior_state, _, dec_state = model._initial_states(context)
    a0, a1 = torch.zeros(2, 4), torch.ones(2, 4)
    with torch.no_grad():
        for l, prior in enumerate(model.prior):
            zs = [torch.zeros(2, model.config.latent_channels[j], s, s)
                  for j, s in enumerate(model.config.latent_sizes[:l])]
            m0, s0, _ = prior(feats[prior.size], zs, a0, prior_state[l])
            m1, s1, _ = prior(feats[prior.size], zs, a1, prior_state[l])
            assert (m0 - m1).abs().max() > 1e-4 and (s0 - s1).abs().max() > 1e-4
        zs = [torch.zeros(2, c, s, s) for c, s in zip(model.config.latent_channels, model.config.latent_sizes)]
        _, state0 = model.decoder.step(feats, zs, a0, dec_state)
        _, state1 = model.decoder.step(feats, zs, a1, dec_state)
        for (h0, _), (h1, _) in zip(state0, state1):  # every decoder ConvLSTM sees the action
            assert (h0 - h1).abs().max() > 1e-4


def test_dense_connections_between_levels_and_into_the_decoder():
    """Level l's prior and posterior read every sampled level above it; every decoder ConvLSTM reads every level."""
    model = make_model(latent_sizes=(1, 4, 8), latent_channels=(4, 3, 2)).eval()
    feats = model.encode(torch.rand(2, 3, SIZE, SIZE))
    context = {r: torch.stack([f, f], dim=1) for r, f in feats.items()}
    prior_state, post_state, dec_state = model._initial_states(context)
    action = torch.zeros(2, 4)
    zs = [torch.zeros(2, c, s, s) for c, s in zip(model.config.latent_channels, model.config.latent_sizes)]
    with torch.no_grad():
        for l in range(model.num_levels):
            for levels, states in ((model.prior, prior_state), (model.posterior, post_state)):
                base, _, _ = levels[l](feats[levels[l].size], zs[:l], action, states[l])
                for j in range(l):  # changing any level above changes this level's distribution
                    bumped = [z + (i == j) for i, z in enumerate(zs[:l])]
                    assert (levels[l](feats[levels[l].size], bumped, action, states[l])[0] - base).abs().max() > 1e-4
        _, base = model.decoder.step(feats, zs, action, dec_state)
        for j in range(model.num_levels):
            _, bumped = model.decoder.step(feats, [z + (i == j) for i, z in enumerate(zs)], action, dec_state)
            for (h0, _), (h1, _) in zip(base, bumped):
                assert (h0 - h1).abs().max() > 1e-4, j


def test_action_conditioning_changes_the_prediction():
    model = make_model()
    train_steps(model, clip_batch(), steps=3)  # a fresh model copies the last frame (zero output layer)
    context, _ = context_and_actions(clip_batch(2))
    p0 = model.predict(context, torch.zeros(2, 3, 4), seed=0)
    p1 = model.predict(context, torch.ones(2, 3, 4), seed=0)
    assert (p0 - p1).abs().max() > 1e-3


def _square_frames(positions: list[tuple[float, float]]) -> torch.Tensor:
    frames = torch.full((len(positions), 3, SIZE, SIZE), BACKGROUND)
    for t, (y, x) in enumerate(positions):
        y, x = int(round(y)), int(round(x))
        frames[t, :, y:y + SQUARE, x:x + SQUARE] = COLOUR[:, None, None]
    return frames


def _centroid(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = (frames.mean(-3) - BACKGROUND).clamp_min(0)  # [..., H, W]
    ys, xs = torch.arange(SIZE, dtype=w.dtype)[:, None], torch.arange(SIZE, dtype=w.dtype)[None]
    mass = w.sum((-2, -1)).clamp_min(1e-6)
    return (w * ys).sum((-2, -1)) / mass, (w * xs).sum((-2, -1)) / mass


def test_a_briefly_trained_model_moves_the_square_the_way_the_action_says(tmp_path):
    """60 Trainer steps on SyntheticClips (the square moves by actions[:, :2] * 2 px): held +-y and +-x actions
    from a square at rest move the predicted square apart along that axis, at every step."""
    model = make_model(kl_warmup_steps=20)
    clips = SyntheticClips(512, context_frames=2, future_frames=3, image_size=SIZE, square=SQUARE, seed=0)
    config = dataclasses.replace(preset(TrainConfig, "tiny"), steps=60, batch_size=16, lr=5e-3, warmup_steps=10,
                                 progress=False, log_every=60)
    Trainer(model, clips, config=config, run_dir=tmp_path / "run").fit()
    model.eval()
    centre = (SIZE - SQUARE) / 2
    context = _square_frames([(centre, centre)] * 2).expand(2, -1, -1, -1, -1)
    true_gap = 2 * 0.8 * (SIZE / 8) * 3  # +0.8 minus -0.8, 2 px per unit action, 3 steps: 9.6 px
    for axis in (0, 1):
        actions = torch.zeros(2, 3, 4)
        actions[0, :, axis], actions[1, :, axis] = 0.8, -0.8
        video = model.predict(context, actions, num_samples=4, seed=0)  # [2, 4, 3, 3, H, W]
        moved = _centroid(video)[axis].mean(1)  # [2, T]
        gap = moved[0] - moved[1]
        assert (gap[1:] > gap[:-1]).all() and (gap > 0).all(), (axis, gap)
        assert gap[-1] > 0.4 * true_gap, (axis, gap, true_gap)
        other = _centroid(video)[1 - axis].mean(1)
        assert (other[0] - other[1]).abs().max() < 0.25 * gap[-1], (axis, other)  # not along the other axis


# ---------------------------------------------------------------------------------------------- sampling
def test_same_seed_same_video_and_samples_differ():
    model = make_model()
    train_steps(model, clip_batch(), steps=3)
    context, actions = context_and_actions(clip_batch(2))
    a = model.predict(context, actions, num_samples=3, seed=7)
    assert a.shape == (2, 3, 3, 3, SIZE, SIZE) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, model.predict(context, actions, num_samples=3, seed=7))
    assert not torch.equal(a, model.predict(context, actions, num_samples=3, seed=8))
    assert not torch.equal(a[:, 0], a[:, 1])  # samples of one input differ
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(model.predict(context, actions, num_samples=3, generator=gen), a)
    assert model.training  # predict restores the mode it found


def test_shared_context_is_encoded_once_and_a_row_alone_gets_its_batch_sample():
    model = make_model()
    train_steps(model, clip_batch(), steps=3)
    context, _ = context_and_actions(clip_batch(1))
    one = context.expand(5, -1, -1, -1, -1)  # how planners call it: stride 0 over candidates
    actions = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    calls = []
    hook = model.encoder.stem.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    shared = model.predict(one, actions, num_samples=2, seed=1)
    hook.remove()
    assert calls == [2, 10, 10]  # 1 context x 2 frames, then the 5 x 2 predicted frames of steps 1 and 2
    plain = model.predict(one.contiguous(), actions, num_samples=2, seed=1)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    alone = model.predict(one[3:4], actions[3:4], num_samples=2, seed=1)
    torch.testing.assert_close(alone[0], shared[3], rtol=0, atol=1e-5)
    assert not torch.allclose(shared[:, 0], shared[:, 1])  # the samples still differ


# ---------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = make_model()
    train_steps(model, clip_batch(), steps=3)
    model.save_pretrained(tmp_path / "m")
    loaded = foresight.load(tmp_path / "m")
    assert isinstance(loaded, HierVRNN) and loaded.config == model.config
    assert int(loaded.train_step) == int(model.train_step) == 3
    context, actions = context_and_actions(clip_batch(3))
    assert torch.equal(loaded.predict(context, actions, 2, seed=4), model.predict(context, actions, 2, seed=4))
    frames = clip_batch(2)["frames"]
    assert torch.equal(loaded.features(frames), model.features(frames))


# ---------------------------------------------------------------------------------------------- training
def test_loss_falls_on_a_tiny_dataset():
    model = make_model(kl_warmup_steps=0)  # a fixed objective: beta at its full weight from the start
    batch = clip_batch(8)
    losses = train_steps(model, batch, steps=40, lr=3e-3)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    _, metrics = model.loss(batch)
    assert {"mse", "psnr", "kl", "kl0", "kl1", "beta", "loss"} <= set(metrics)


def test_train_world_model_script_runs_on_synthetic_data(tmp_path):
    from experiments.train_world_model import main

    export = main(["--model", "hier_vrnn", "--preset", "tiny", "data.root=synthetic", "data.synthetic_clips=16",
                   "train.steps=3", "train.progress=false", f"run_dir={tmp_path / 'run'}"])
    assert (tmp_path / "run" / "all" / "checkpoints" / "last" / "config.json").is_file()
    model = foresight.load(export)
    assert isinstance(model, HierVRNN) and int(model.train_step) == 3
    video = model.predict(torch.rand(1, 2, 3, SIZE, SIZE), torch.zeros(1, 4, 4), seed=0)
    assert video.shape == (1, 1, 4, 3, SIZE, SIZE)  # longer than trained: the rollout just continues


def test_bf16_autocast_on_cpu():
    """What the Trainer does on CUDA (bf16 autocast), run on the CPU: a finite loss with gradients, and float32
    predictions in [0, 1]."""
    model = make_model(kl_warmup_steps=0)
    batch = clip_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = model.loss(batch)
        loss.backward()
        context, actions = context_and_actions(batch)
        video = model.predict(context, actions, num_samples=2, seed=0)
    assert loss.dtype == torch.float32 and np.isfinite(metrics["kl"]) and metrics["kl"] > 0
    assert all(p.grad is not None for p in model.posterior.parameters())
    assert video.dtype == torch.float32 and 0 <= video.min() and video.max() <= 1


def test_action_free_mode():
    model = make_model(action_dim=0)
    batch = clip_batch()
    batch.pop("actions")
    assert np.isfinite(train_steps(model, batch, steps=2)).all()
    out = model.predict(batch["frames"][:, :2], None, horizon=4, seed=0)
    assert out.shape == (4, 1, 4, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="action-free"):
        model.predict(batch["frames"][:, :2], torch.zeros(4, 4, 4))


# ---------------------------------------------------------------------------------------------- features, planners
def test_features_and_embeddings():
    model = make_model()
    frames = clip_batch(2)["frames"]  # [2, 5, 3, 16, 16]
    feats = model.features(frames)
    assert feats.shape == (2, 5, model.feature_dim) and feats.requires_grad
    changed = frames.clone()
    changed[:, -1] = 1 - changed[:, -1]
    torch.testing.assert_close(model.features(changed)[:, :-1], feats[:, :-1])  # causal
    assert model.supports_embeddings and model.embed(frames).shape == (2, 5, model.embedding_dim)
    context, actions = context_and_actions(clip_batch(2))
    emb = model.predict_embeddings(context, actions, num_samples=2, seed=0)
    video = model.predict(context, actions, num_samples=2, seed=0)
    torch.testing.assert_close(emb, model.embed(video))


@pytest.mark.parametrize("optimizer", ["random", "cem", "icem", "mppi"])
def test_every_planner_runs_on_it(optimizer):
    from agents.mpc import VisualMPC
    from agents.optimizers import make_optimizer

    model = make_model()
    train_steps(model, clip_batch(), steps=2)
    model.eval()
    kwargs = {"num_samples": 8, "iterations": 2} if optimizer != "random" else {"num_samples": 8}
    image = (clip_batch(1)["frames"][0, 0].permute(1, 2, 0) * 255).round().byte().numpy()  # [H, W, 3] uint8
    for cost in ("pixel", "embedding"):
        agent = VisualMPC(model, make_optimizer(optimizer, **kwargs), horizon=3, action_low=-np.ones(4),
                          action_high=np.ones(4), cost=cost, predict_batch_size=5, seed=0)
        agent.reset(image[::-1].copy())
        action = agent.act(image)
        assert action.shape == (4,) and np.all(np.abs(action) <= 1)
        assert agent.records[-1].imagined.shape == (3, SIZE, SIZE, 3)


# ---------------------------------------------------------------------------------------------- input checks
def test_bad_inputs_raise_the_world_model_errors():
    model = make_model()
    context, actions = context_and_actions(clip_batch(2))
    with pytest.raises(ValueError, match="expected 16x16 frames"):
        model.predict(torch.rand(2, 2, 3, 8, 8), actions)
    with pytest.raises(ValueError, match="at least 2 frames"):
        model.predict(context[:, :1], actions)
    with pytest.raises(ValueError, match="action_dim=4"):
        model.predict(context, torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="expected batch 2"):
        model.predict(context, actions[:1])
    with pytest.raises(ValueError, match="action-conditioned"):
        model.predict(context, None, horizon=3)
    with pytest.raises(ValueError, match="num_samples"):
        model.predict(context, actions, num_samples=0)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        model.predict(context * 255, actions)
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        model.predict((context * 255).byte(), actions)
    batch = clip_batch(2)
    with pytest.raises(ValueError, match=r"frames: expected \[B, T > 2"):
        model.loss(dict(batch, frames=batch["frames"][:, :2]))
    with pytest.raises(ValueError, match="actions: expected"):
        model.loss({"frames": batch["frames"]})
    with pytest.raises(ValueError, match="actions: expected"):
        model.loss(dict(batch, actions=batch["actions"][:, :2]))
