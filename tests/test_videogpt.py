"""VideoGPT world model: clip quantizer, causality of the VQ-VAE and the prior, cache exactness, shared contexts,
action conditioning (untrained and trained), input checks, save/load, learning, the training script, planners."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import foresight
from foresight.data.cache import CachedCodes
from foresight.models.videogpt import VideoGPT, VideoGPTConfig
from foresight.models.videogpt import prior as prior_module
from foresight.models.videogpt.prior import sample_future_codes
from foresight.testing import SyntheticClips, fit_stage

torch.set_num_threads(1)

SIZE, SQUARE, BACKGROUND = 16, 4, 0.1
COLOUR = torch.tensor([0.9, 0.8, 0.3])


def tiny_config(**changes) -> VideoGPTConfig:
    return dataclasses.replace(foresight.preset(VideoGPTConfig, "tiny"), **changes)


def tiny_model(seed: int = 0, **changes) -> VideoGPT:
    torch.manual_seed(seed)
    return VideoGPT(tiny_config(**changes))


def square_frames(y: int, x: int, t: int) -> torch.Tensor:
    """``t`` frames ``[t, 3, SIZE, SIZE]`` of the `SyntheticClips` square standing still at (y, x)."""
    frames = torch.full((t, 3, SIZE, SIZE), BACKGROUND)
    frames[:, :, y:y + SQUARE, x:x + SQUARE] = COLOUR[:, None, None]
    return frames


def centroid(frames: torch.Tensor, axis: int) -> torch.Tensor:
    """Brightness-weighted centre along ``axis`` (0 = y, 1 = x) of what stands above the background."""
    w = (frames.mean(-3) - BACKGROUND).clamp_min(0)  # [..., H, W]
    coord = torch.arange(SIZE, dtype=w.dtype)
    coord = coord[:, None] if axis == 0 else coord[None]
    return (w * coord).sum((-2, -1)) / w.sum((-2, -1)).clamp_min(1e-6)


# ---------------------------------------------------------------------------------------------- config, VQ-VAE
def test_registered_presets_and_config_checks():
    assert foresight.get_model_class("videogpt") is VideoGPT
    for name in ("tiny", "quick", "paper"):
        foresight.preset(VideoGPTConfig, name).validate()
    paper = foresight.preset(VideoGPTConfig, "paper")  # the seed's BAIR sizes: 16 frames -> 8 x 32 x 32 latents
    assert (paper.latent_steps, paper.grid, paper.codebook_size, paper.layers, paper.width) == (8, 32, 1024, 16, 512)
    quick = foresight.preset(VideoGPTConfig, "quick")
    assert (quick.image_size, quick.context_frames, quick.future_frames) == (64, 2, 10)
    with pytest.raises(ValueError, match="may not mix context and future"):
        VideoGPT(tiny_config(context_frames=1))
    with pytest.raises(ValueError, match="power of two"):
        VideoGPT(tiny_config(space_downsample=3))


def test_quantizer_over_clips_passes_gradients_to_the_encoder():
    model = tiny_model().set_stage("vqvae").train()
    frames = SyntheticClips(8, context_frames=2, future_frames=4, image_size=SIZE, square=SQUARE)
    batch = torch.stack([frames[i]["frames"] for i in range(8)])  # [8, 6, 3, 16, 16]
    loss, metrics = model.loss({"frames": batch})
    loss.backward()
    assert int(model.vqvae.quantizer.initialized) == 1  # codebook initialised from the first batch's latents
    assert metrics["used_codes"] > 1 and metrics["perplexity"] > 1
    assert float(model.vqvae.data_variance) == pytest.approx(float((batch - 0.5).var()), rel=1e-4)
    first_conv = model.vqvae.encoder.downs[0].conv.weight
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0  # straight-through estimator
    assert all(p.grad is None for p in model.prior.parameters())
    codes = model.encode(batch)
    assert codes.shape == (8, 3, 4, 4) and codes.dtype == torch.long and int(codes.max()) < 32


def test_vqvae_is_causal_in_time():
    model = tiny_model().eval()
    clip = torch.rand(2, 6, 3, SIZE, SIZE)
    with torch.no_grad():
        z = model.vqvae.encode_latent(clip)  # [2, E, 3, 4, 4]
        # the context steps are a function of the context frames alone: encode(context) is the prefix
        assert torch.allclose(model.vqvae.encode_latent(clip[:, :2]), z[:, :, :1], atol=1e-6)
        assert torch.equal(model.encode(clip[:, :2]), model.encode(clip)[:, :1])
        changed = clip.clone()
        changed[:, 4:] = torch.rand(2, 2, 3, SIZE, SIZE)  # frames of latent step 2 only
        z2 = model.vqvae.encode_latent(changed)
        assert torch.allclose(z2[:, :, :2], z[:, :, :2], atol=1e-6) and not torch.allclose(z2[:, :, 2], z[:, :, 2])
        # decoding a prefix of the latent grid gives a prefix of the video
        codes = torch.randint(0, 32, (2, 3, 4, 4))
        video = model.decode(codes)
        assert video.shape == (2, 6, 3, SIZE, SIZE)
        assert torch.allclose(model.decode(codes[:, :2]), video[:, :4], atol=1e-6)
    with pytest.raises(ValueError, match="multiple of time_downsample"):
        model.encode(clip[:, :3])


# ---------------------------------------------------------------------------------------------- prior
def test_prior_is_causal():
    model = tiny_model().eval()
    tr, n = model.prior, model.prior.codes_per_step  # 16 codes per latent step, 1 context + 2 future steps
    codes = torch.randint(0, 32, (2, 3, 4, 4))
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, 2, 8)
    with torch.no_grad():
        logits = tr(codes, context, actions)  # [2, 32, K]: slots of the future codes
        q = 5  # a code of the first future step (sequence position n + q)
        later = codes.flatten(1).clone()
        later[:, n + q] = (later[:, n + q] + 1) % 32
        changed = tr(later.view_as(codes), context, actions)
        assert torch.equal(changed[:, :q + 1], logits[:, :q + 1])  # slots up to the changed code cannot see it
        assert not torch.allclose(changed[:, q + 1], logits[:, q + 1])
        other_actions = actions.clone()
        other_actions[:, 1] = torch.randn(2, 8)  # the action vector of the second future step
        changed = tr(codes, context, other_actions)
        assert torch.equal(changed[:, :n], logits[:, :n]) and not torch.allclose(changed[:, n:], logits[:, n:])


def test_cached_logits_equal_full_recompute():
    model = tiny_model().eval()
    tr, n = model.prior, model.prior.codes_per_step
    codes = torch.randint(0, 32, (2, 3, 4, 4))
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, 2, 8)
    with torch.no_grad():
        full = tr(codes, context, actions)  # [2, 2N, K]
        memory = tr.memory(context)
        x = tr.inputs(tr.shifted(tr.tok_emb(codes.flatten(1))), 0)
        cache = tr.new_cache(3 * n)
        tr.run(x[:, :n], None, memory, cache=cache)  # context slots in one pass, a = 0
        cond = tr.window_conditions(actions, 1)
        steps = [tr.run(x[:, p:p + 1], tr.slot_conditions(cond, p, 1), memory, cache=cache)[:, 0]
                 for p in range(n, 3 * n)]
    assert cache.length == 3 * n
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("horizon", [4, 5, 9])  # 5: half a latent step; 9 > future_frames: sliding windows
def test_cached_sampling_matches_uncached(horizon):
    model = tiny_model().eval()
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, horizon, 4)
    cached = model.predict_codes(context, actions, 3, seed=7, use_cache=True)
    recomputed = model.predict_codes(context, actions, 3, seed=7, use_cache=False)
    assert cached.shape == (2, 3, (horizon + 1) // 2, 4, 4)
    assert torch.equal(cached, recomputed)
    video = model.predict(context, actions, 3, seed=7)
    assert video.shape == (2, 3, horizon, 3, SIZE, SIZE) and 0 <= float(video.min()) and float(video.max()) <= 1


def test_shared_context_is_encoded_once_and_matches_per_row(monkeypatch):
    model = tiny_model().eval()
    context = torch.rand(1, 2, 3, SIZE, SIZE).expand(5, -1, -1, -1, -1)  # a planner: one context, 5 candidates
    actions = torch.randn(5, 4, 4)
    seen = {"encoder": [], "cond_net": []}
    hooks = [model.vqvae.encoder.register_forward_hook(lambda m, i, o: seen["encoder"].append(i[0].shape[0])),
             model.prior.cond_net.register_forward_hook(lambda m, i, o: seen["cond_net"].append(i[0].shape[0]))]
    shared = model.predict_codes(context, actions, 2, seed=1)
    for h in hooks:
        h.remove()
    assert seen == {"encoder": [1], "cond_net": [2]}  # one clip, its 2 context frames
    # the per-row path (every row encoded and cached on its own) samples the same codes
    monkeypatch.setattr(prior_module, "_all_same", lambda x: False)
    codes = model.encode(context.contiguous())
    per_row = sample_future_codes(model.prior, codes, context.contiguous(), model.latent_actions(actions), steps=2,
                                  num_samples=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shared, per_row)


def test_top_k_and_temperature():
    model = tiny_model(top_k=1).eval()
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, 4, 4)
    greedy = model.predict_codes(context, actions, 2, seed=0)
    assert torch.equal(greedy, model.predict_codes(context, actions, 2, seed=1))  # k = 1: no randomness left
    assert torch.equal(greedy[:, 0], greedy[:, 1])
    model.config.top_k = 0
    sampled = model.predict_codes(context, actions, 2, seed=0)
    assert not torch.equal(sampled, model.predict_codes(context, actions, 2, seed=1))
    model.config.temperature = 1e-4  # temperature -> 0 is greedy too
    assert torch.equal(model.predict_codes(context, actions, 2, seed=3), greedy)


def test_actions_change_the_prediction():
    model = tiny_model(top_k=1).eval()  # greedy: differences come from the actions, not the sampling
    context = torch.rand(1, 2, 3, SIZE, SIZE)
    up, down = torch.full((1, 4, 4), 3.0), torch.full((1, 4, 4), -3.0)
    with torch.no_grad():
        codes = torch.cat([model.encode(context), torch.randint(0, 32, (1, 2, 4, 4))], dim=1)
        la = model.prior(codes, context, model.latent_actions(up))
        lb = model.prior(codes, context, model.latent_actions(down))
    assert not torch.allclose(la, lb)
    va = model.predict(context, up, seed=0)
    assert not torch.equal(va, model.predict(context, down, seed=0))
    assert torch.equal(va, model.predict(context, up, seed=0))  # same actions, same seed: same video


def test_latent_actions_concatenate_the_frames_of_a_step():
    model = tiny_model()
    actions = torch.arange(5 * 4, dtype=torch.float32).view(1, 5, 4)
    steps = model.latent_actions(actions)  # [1, 3, 8]
    assert torch.equal(steps[0, 0], torch.cat([actions[0, 0], actions[0, 1]]))
    assert torch.equal(steps[0, 2], torch.cat([actions[0, 4], actions[0, 4]]))  # the last action held


@pytest.mark.parametrize(
    "context, actions, match",
    [
        (torch.rand(2, 2, 3, 32, 32), torch.zeros(2, 4, 4), r"expected 16x16 frames"),
        (torch.rand(2, 3, 16, 16), torch.zeros(2, 4, 4), r"expected shape \[B, T, 3, 16, 16\]"),
        (torch.rand(2, 2, 3, 16, 16) * 255, torch.zeros(2, 4, 4), r"expected values in \[0, 1\]"),
        ((torch.rand(2, 2, 3, 16, 16) * 255).to(torch.uint8), torch.zeros(2, 4, 4), r"float tensor"),
        (torch.rand(2, 2, 3, 16, 16), torch.zeros(2, 4, 7), r"expected shape \[2, T, 4\]"),
        (torch.rand(2, 2, 3, 16, 16), torch.zeros(3, 4, 4), r"batch 2"),
        (torch.rand(2, 2, 3, 16, 16), None, r"action-conditioned"),
        (torch.rand(2, 1, 3, 16, 16), torch.zeros(2, 4, 4), r"at least 2 frames"),
        (torch.rand(2, 2, 3, 16, 16), torch.full((2, 4, 4), float("nan")), r"NaN"),
    ],
)
def test_bad_inputs_raise_the_contract_errors(context, actions, match):
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=match):
        model.predict(context, actions)
    with pytest.raises(ValueError, match=match):
        model.predict_embeddings(context, actions)


def test_bad_training_batches_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="at least context_frames"):
        model.set_stage("vqvae").loss({"frames": torch.rand(1, 4, 3, SIZE, SIZE)})
    with pytest.raises(ValueError, match="'codes'"):
        model.set_stage("prior").loss({"actions": torch.randn(1, 5, 4)})
    with pytest.raises(ValueError, match="needs 'actions'"):
        model.loss({"frames": torch.rand(1, 6, 3, SIZE, SIZE)})


def test_action_free_mode():
    model = tiny_model(action_dim=0).eval()
    video = model.predict(torch.rand(2, 2, 3, SIZE, SIZE), None, horizon=3, seed=0)
    assert video.shape == (2, 1, 3, 3, SIZE, SIZE)
    loss, _ = model.set_stage("prior").loss({"frames": torch.rand(2, 6, 3, SIZE, SIZE)})
    assert torch.isfinite(loss)


def test_stage_dataset_caches_codes_once():
    model = tiny_model().eval()
    clips = SyntheticClips(5, context_frames=2, future_frames=4, image_size=SIZE, square=SQUARE)
    cached = model.stage_dataset(clips, "prior")
    assert isinstance(cached, CachedCodes) and len(cached) == 5
    assert torch.equal(cached[3]["codes"], model.encode(clips[3]["frames"][None])[0])
    assert cached[3]["context"].dtype == torch.uint8 and cached[3]["context"].shape == (2, 3, SIZE, SIZE)
    assert model.stage_dataset(clips, "vqvae") is clips
    model.set_stage("prior")
    raw = {k: torch.stack([clips[i][k] for i in range(5)]) for k in ("frames", "actions")}
    batch = {k: torch.stack([cached[i][k] for i in range(5)]) for k in ("codes", "actions", "context")}
    assert torch.allclose(model.loss(batch)[0], model.loss(raw)[0], atol=1e-3)  # context pixels stored as uint8


def test_bf16_autocast_trains_and_samples():
    model = tiny_model()
    frames, actions = torch.rand(2, 6, 3, SIZE, SIZE), torch.randn(2, 5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for stage in ("vqvae", "prior"):
            model.set_stage(stage).train()
            loss, _ = model.loss({"frames": frames, "actions": actions})
            loss.backward()
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
        codes = model.predict_codes(frames[:, :2], actions[:, :4], 2, seed=0)
        assert torch.equal(codes, model.predict_codes(frames[:, :2], actions[:, :4], 2, seed=0, use_cache=False))
        video = model.predict(frames[:, :2], actions[:, :4], seed=0)
    assert video.dtype == torch.float32 and video.shape == (2, 1, 4, 3, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------- embeddings, planners
def test_embeddings_are_the_codebook_vectors_of_the_sampled_codes():
    model = tiny_model().eval()
    assert model.supports_embeddings
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, 5, 4)
    emb = model.predict_embeddings(context, actions, 2, seed=4)  # [2, 2, 5, N*E]
    codes = model.predict_codes(context, actions, 2, seed=4)  # [2, 2, 3, 4, 4]
    assert emb.shape == (2, 2, 5, 16 * 8)
    for t in range(5):
        assert torch.equal(emb[:, :, t], model.code_embedding(codes[:, :, t // 2]))
    goal = torch.rand(3, SIZE, SIZE)
    still = goal[None, None].expand(1, 4, -1, -1, -1)  # the goal held still for C + dt frames
    assert torch.equal(model.embed(goal), model.code_embedding(model.encode(still)[0, -1]))
    assert model.embed(goal[None, None]).shape == (1, 1, 128)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 16, 16\]"):
        model.embed(torch.rand(3, 8, 8))


@pytest.mark.parametrize("cost", ["pixel", "embedding"])
def test_planners_work_with_videogpt(cost):
    from agents.mpc import VisualMPC
    from agents.optimizers import CEM

    model = tiny_model().eval()
    agent = VisualMPC(model, CEM(num_samples=8, iterations=2, min_elites=2), horizon=4, action_low=-np.ones(4),
                      action_high=np.ones(4), cost=cost, cost_weighting="all", predict_batch_size=5, seed=3)
    context = square_frames(6, 6, 2)
    actions, video = agent.plan_from(context, square_frames(10, 10, 1)[0])
    assert actions.shape == (4, 4) and float(actions.abs().max()) <= 1
    assert video.shape == (4, 3, SIZE, SIZE)
    if cost == "pixel":  # the recorded imagined video is the sample the planner scored
        assert float(agent.cost(video[None, None])) == pytest.approx(agent.records[-1].cost, rel=1e-5)


# ---------------------------------------------------------------------------------------------- trained tiny model
@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on `SyntheticClips` (a square moved by ``actions[:, :2]``): 200 steps per stage."""
    torch.manual_seed(0)
    model = VideoGPT(tiny_config())
    clips = SyntheticClips(512, context_frames=2, future_frames=4, image_size=SIZE, square=SQUARE, seed=0)
    data = {k: torch.stack([clips[i][k] for i in range(len(clips))]) for k in ("frames", "actions")}
    vq = fit_stage(model, "vqvae", data, steps=200, lr=5e-3)
    model.eval()
    codes = {"codes": model.encode(data["frames"]), "actions": data["actions"], "context": data["frames"][:, :2]}
    ce = fit_stage(model, "prior", codes, steps=200, lr=3e-3)
    return {"model": model.eval(), "vqvae_loss": vq, "prior_ce": ce}


def test_tiny_model_losses_fall(trained):
    vq, ce = trained["vqvae_loss"], trained["prior_ce"]
    assert np.mean(vq[-10:]) < 0.2 * np.mean(vq[:10])
    assert ce[0] == pytest.approx(np.log(32), abs=0.1)  # uniform over the 32 codes at the start
    assert np.mean(ce[-10:]) < ce[0] - 1.5  # nats per code


@pytest.mark.parametrize("axis", [0, 1], ids=["y", "x"])
def test_trained_model_moves_the_way_the_action_says(trained, axis):
    model = trained["model"]
    model.config.top_k = 1  # greedy: an action-blind model would predict the same video for both plans
    try:
        context = square_frames(6, 6, 2)[None].expand(2, -1, -1, -1, -1)  # at rest in the middle
        actions = torch.zeros(2, 4, 4)
        actions[0, :, axis], actions[1, :, axis] = 0.8, -0.8  # 1.6 pixels per step each way
        video = model.predict(context, actions, seed=0)[:, 0]  # [2, 4, 3, H, W]
    finally:
        model.config.top_k = 0
    gap = centroid(video, axis)[0] - centroid(video, axis)[1]  # [4]: +axis minus -axis
    true_gap = torch.tensor([3.2, 6.4, 9.6, 12.0])  # the square stops at the border in the last step
    assert (gap > 0.15 * true_gap).all(), (gap, true_gap)  # the right direction at every step
    assert gap[-1] > 0.3 * true_gap[-1], (gap, true_gap)  # an action-blind prior gives 0 here


def test_save_load_round_trip_is_bit_identical(trained, tmp_path):
    model = trained["model"].set_stage("prior")
    model.save_pretrained(tmp_path / "m")
    loaded = foresight.load(tmp_path / "m")
    assert isinstance(loaded, VideoGPT) and loaded.stage == "prior" and loaded.config == model.config
    # the loaded model freezes what the saved one froze (set_stage on load)
    assert [q.requires_grad for q in loaded.parameters()] == [q.requires_grad for q in model.parameters()]
    assert any(q.requires_grad for q in loaded.parameters()) and not all(q.requires_grad for q in loaded.parameters())
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert float(loaded.vqvae.data_variance) > 0 and int(loaded.vqvae.quantizer.initialized) == 1
    context, actions = torch.rand(3, 2, 3, SIZE, SIZE), torch.randn(3, 5, 4)
    assert torch.equal(model.predict(context, actions, 2, seed=1), loaded.predict(context, actions, 2, seed=1))
    assert torch.equal(model.predict_embeddings(context, actions, seed=2),
                       loaded.predict_embeddings(context, actions, seed=2))


# ---------------------------------------------------------------------------------------------- training script
def test_train_script_trains_every_stage_and_refuses_a_random_vqvae(tmp_path):
    from experiments.common import UsageError
    from experiments.train_world_model import main

    common = ["--model", "videogpt", "--preset", "tiny", "data.root=synthetic", "data.synthetic_clips=16",
              "train.steps=3", "train.progress=false"]
    with pytest.raises(UsageError, match="holds no finished 'vqvae' stage"):
        main(common + ["--stage", "prior", f"run_dir={tmp_path / 'fresh'}"])
    export = main(common + [f"run_dir={tmp_path / 'run'}"])
    for stage in ("vqvae", "prior"):
        assert (tmp_path / "run" / stage / "checkpoints" / "last" / "config.json").is_file()
    model = foresight.load(export)
    assert isinstance(model, VideoGPT) and model.stage == "prior"
    assert int(model.vqvae.quantizer.initialized) == 1
    video = model.predict(torch.rand(1, 2, 3, SIZE, SIZE), torch.zeros(1, 4, 4), seed=0)
    assert video.shape == (1, 1, 4, 3, SIZE, SIZE)


@pytest.mark.parametrize("horizon", [4, 9])  # 9 > future_frames: slides re-run steps after the shared prefix
def test_one_shared_context_for_many_candidates_matches_recomputation(horizon):
    # a planner's call: one context, many candidate action sequences; the context's keys / values are a prefix
    # shared by all rows (KVCache.broadcast) and must give the codes of the full recomputation
    model = tiny_model().eval()
    context = torch.rand(1, 2, 3, SIZE, SIZE).expand(4, -1, -1, -1, -1)
    actions = torch.randn(4, horizon, 4)
    cached = model.predict_codes(context, actions, 2, seed=5, use_cache=True)
    recomputed = model.predict_codes(context, actions, 2, seed=5, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert not torch.equal(cached[0], cached[1])
