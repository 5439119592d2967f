"""Video VQ-VAE world model: the two-level quantizer over clips, causality of the VQ-VAE, of the masked
convolutions and of both priors, sampling against teacher forcing, shared contexts, action conditioning, input
checks, the code cache, embeddings, planners, save/load, learning and the training script."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import foresight
from foresight.data.cache import CachedCodes
from foresight.models.video_vqvae import VideoVQVAE, VideoVQVAEConfig
from foresight.models.video_vqvae.model import step_actions
from foresight.models.video_vqvae.pixelcnn import MaskedConv3d
from foresight.testing import SyntheticClips, fit_stage

torch.set_num_threads(1)

SIZE = 16  # tiny: 2 + 4 frames -> bottom 6 x 4 x 4 codes, top 3 x 2 x 2 codes, 32 codes per level
K = 32


def tiny_config(**changes) -> VideoVQVAEConfig:
    return dataclasses.replace(foresight.preset(VideoVQVAEConfig, "tiny"), **changes)


def tiny_model(seed: int = 0, **changes) -> VideoVQVAE:
    torch.manual_seed(seed)
    return VideoVQVAE(tiny_config(**changes))


def clip_batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    clips = SyntheticClips(n, context_frames=2, future_frames=4, image_size=SIZE, seed=seed)
    return {k: torch.stack([clips[i][k] for i in range(n)]) for k in ("frames", "actions")}


def random_codes(b: int = 2, generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(generator_seed)
    return torch.randint(0, K, (b, 3, 2, 2), generator=g), torch.randint(0, K, (b, 6, 4, 4), generator=g)


# ---------------------------------------------------------------------------------------------- config, VQ-VAE
def test_registered_presets_and_config_checks():
    assert foresight.get_model_class("video_vqvae") is VideoVQVAE
    for name in ("tiny", "quick", "paper"):
        foresight.preset(VideoVQVAEConfig, name).validate()
    paper = foresight.preset(VideoVQVAEConfig, "paper")  # the seed: 256x256x16 -> 64x64x8 and 32x32x4, 512 codes
    assert (paper.image_size, paper.context_frames, paper.future_frames) == (256, 4, 12)
    steps = paper.context_bottom_steps + paper.future_bottom_steps
    assert (paper.bottom_grid, steps, paper.top_grid, paper.top_window) == (64, 8, 32, 4)
    assert (paper.codebook_size, paper.code_dim, paper.top_layers, paper.bottom_layers) == (512, 64, 40, 20)
    quick = foresight.preset(VideoVQVAEConfig, "quick")
    assert (quick.image_size, quick.context_frames, quick.future_frames) == (64, 2, 10)
    with pytest.raises(ValueError, match="may not mix context and future"):
        VideoVQVAE(tiny_config(context_frames=1))
    with pytest.raises(ValueError, match="power of two"):
        VideoVQVAE(tiny_config(top_space_downsample=3))
    with pytest.raises(ValueError, match="must be odd"):
        VideoVQVAE(tiny_config(bottom_kernel=4))


def test_quantizer_over_clips_passes_gradients_to_both_encoders():
    model = tiny_model().set_stage("vqvae").train()
    batch = clip_batch(8)
    loss, metrics = model.loss(batch)
    loss.backward()
    vq = model.vqvae
    assert int(vq.bottom_quantizer.initialized) == 1 and int(vq.top_quantizer.initialized) == 1
    assert metrics["used_codes_bottom"] > 1 and metrics["used_codes_top"] > 1
    for conv in (vq.bottom_encoder.downs[0].conv, vq.top_encoder.downs[0].conv):  # straight-through estimator
        assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in [*model.top_prior.parameters(), *model.bottom_prior.parameters()])
    bottom, top = model.encode(batch["frames"])
    assert bottom.shape == (8, 6, 4, 4) and top.shape == (8, 3, 2, 2) and bottom.dtype == torch.long
    assert int(bottom.max()) < K and int(top.max()) < K


def test_vqvae_is_causal_in_time():
    model = tiny_model().eval()
    clip = torch.rand(2, 6, 3, SIZE, SIZE)
    with torch.no_grad():
        bottom, top = model.encode(clip)
        ctx_bottom, ctx_top = model.encode(clip[:, :2])  # the context alone gives the prefix of the codes
        assert torch.equal(ctx_bottom, bottom[:, :2]) and torch.equal(ctx_top, top[:, :1])
        zb, zt = model.vqvae.encode_latents(clip)
        changed = clip.clone()
        changed[:, 4:] = torch.rand(2, 2, 3, SIZE, SIZE)  # the frames of top step 2 only
        zb2, zt2 = model.vqvae.encode_latents(changed)
        assert torch.allclose(zb2[:, :, :4], zb[:, :, :4], atol=1e-6) and not torch.allclose(zb2[:, :, 4], zb[:, :, 4])
        assert torch.allclose(zt2[:, :, :2], zt[:, :, :2], atol=1e-6) and not torch.allclose(zt2[:, :, 2], zt[:, :, 2])
        video = model.decode(bottom, top)  # a prefix of the latents decodes to a prefix of the video
        assert video.shape == (2, 6, 3, SIZE, SIZE)
        assert torch.allclose(model.decode(bottom[:, :3], top[:, :2]), video[:, :3], atol=1e-6)
    with pytest.raises(ValueError, match="need 2 top steps"):
        model.decode(bottom[:, :3], top[:, :1])


# ---------------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_sees_only_earlier_positions(mask_type):
    torch.manual_seed(0)
    conv = MaskedConv3d(3, 4, kernel=3, time_kernel=2, mask_type=mask_type)
    x = torch.randn(1, 3, 3, 4, 4)  # [B, C, T, h, w]; flattened (t, h, w) order is the generation order
    with torch.no_grad():
        out = conv(x).flatten(2)  # [1, 4, 48]
        for p in (0, 5, 17, 21, 30, 47):  # changing position p ...
            t, i, j = p // 16, (p // 4) % 4, p % 4
            changed = x.clone()
            changed[:, :, t, i, j] += 5.0
            diff = (conv(changed).flatten(2) - out).abs().amax(1)[0]  # [48]
            assert float(diff[:p].sum()) == 0.0  # ... cannot change an output before it,
            assert (float(diff[p]) == 0.0) == (mask_type == "A")  # nor (type A) the output at p itself,
            if p + 1 < 48 and j < 3:  # but reaches the next position in the row
                assert float(diff[p + 1]) > 0
            if t < 2:  # and the same cell of the next time slice
                assert float(diff[p + 16]) > 0


def test_top_prior_is_causal_in_time_and_raster_order():
    model = tiny_model().eval()
    tr = model.top_prior
    top, bottom = random_codes()
    acts = torch.randn(2, 2, 8)  # action vectors of the 2 future top steps (2 frames x 4 dims)
    with torch.no_grad():
        logits = tr(top, bottom[:, :2], acts).flatten(2)  # [2, K, 8]: the 2 future steps, 4 codes each
        for step, cell in [(1, 1), (1, 3), (2, 0), (2, 2)]:  # window step, raster cell of the changed code
            changed = top.clone()
            changed[:, step].view(2, -1)[:, cell] = (changed[:, step].view(2, -1)[:, cell] + 1) % K
            q = (step - 1) * 4 + cell  # its position among the future codes
            out = tr(changed, bottom[:, :2], acts).flatten(2)
            assert torch.equal(out[:, :, :q + 1], logits[:, :, :q + 1])  # neither it nor anything before it
            if q + 1 < 8:
                assert not torch.allclose(out[:, :, q + 1:], logits[:, :, q + 1:])
        changed = top.clone()
        changed[:, 0] = (changed[:, 0] + 1) % K  # the context step: a known prefix every future code sees
        assert not torch.allclose(tr(changed, bottom[:, :2], acts).flatten(2), logits)
        other = acts.clone()
        other[:, 1] = torch.randn(2, 8)  # the action vector of the second future step
        out = tr(top, bottom[:, :2], other).flatten(2)
        assert torch.equal(out[:, :, :4], logits[:, :, :4]) and not torch.allclose(out[:, :, 4:], logits[:, :, 4:])


def test_bottom_prior_is_causal_and_reads_no_later_top_step():
    model = tiny_model().eval()
    br = model.bottom_prior
    top, bottom = random_codes()
    slices = torch.tensor([2, 3])  # bottom slices 2, 3 sit under top step 1
    acts = torch.randn(2, 2, 4)
    with torch.no_grad():
        logits = br(top, bottom, slices, acts).flatten(3)  # [2, 2, K, 16]
        for cell in (0, 6, 15):
            changed = bottom.clone()
            changed[:, 2].view(2, -1)[:, cell] = (changed[:, 2].view(2, -1)[:, cell] + 1) % K
            out = br(top, changed, slices, acts).flatten(3)
            assert torch.equal(out[:, 0, :, :cell + 1], logits[:, 0, :, :cell + 1])  # slice 2 up to the cell
            if cell < 15:
                assert not torch.allclose(out[:, 0, :, cell + 1:], logits[:, 0, :, cell + 1:])
            assert not torch.allclose(out[:, 1], logits[:, 1])  # slice 3 reads the past slice 2
        later = top.clone()
        later[:, 2] = (later[:, 2] + 1) % K  # a top step after the slices' own
        assert torch.equal(br(top=later, bottom=bottom, slices=slices, slice_actions=acts).flatten(3), logits)
        own = top.clone()
        own[:, 1] = (own[:, 1] + 1) % K
        assert not torch.allclose(br(own, bottom, slices, acts).flatten(3), logits)
        other = acts.clone()
        other[:, 1] = torch.randn(2, 4)  # slice 3's actions only
        out = br(top, bottom, slices, other).flatten(3)
        assert torch.equal(out[:, 0], logits[:, 0]) and not torch.allclose(out[:, 1], logits[:, 1])


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("horizon", [4, 3, 9])  # 3: half a top step; 9 > future_frames: a sliding window
def test_greedy_sampling_agrees_with_teacher_forcing(horizon):
    model = tiny_model(top_k=1).eval()  # greedy: every sampled code is the argmax of its teacher-forced logits
    cfg = model.config
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, horizon, 4)
    top, bottom = model._sample_codes(context, actions, 1, None, horizon)
    n_top, n_bottom = (horizon + 1) // 2, horizon
    assert top.shape == (2, 1 + n_top, 2, 2) and bottom.shape == (2, 2 + n_bottom, 4, 4)
    ta, ba = step_actions(actions, 2), step_actions(actions, 1)
    with torch.no_grad():
        for k in range(n_top):
            g = 1 + k
            ws = max(0, g + 1 - cfg.top_window)  # beyond the trained length the newest steps act as context
            logits = model.top_prior(top[:, ws:g + 1], bottom[:, 2 * ws:2 * ws + 2], ta[:, ws:k + 1])
            assert torch.equal(logits[:, :, -1].argmax(1), top[:, g])
        slices = torch.arange(2, 2 + n_bottom)
        logits = model.bottom_prior(top, bottom, slices, ba)  # [2, n, K, 4, 4]
        assert torch.equal(logits.argmax(2), bottom[:, 2:])
    video = model.predict(context, actions, 2, seed=7)
    assert video.shape == (2, 2, horizon, 3, SIZE, SIZE) and 0 <= float(video.min()) and float(video.max()) <= 1
    assert torch.equal(video, model.predict(context, actions, 2, seed=7))


def test_shared_context_is_encoded_once_and_matches_per_row():
    model = tiny_model(top_k=1).eval()  # greedy, so rows sampled together or alone must agree
    context = torch.rand(1, 2, 3, SIZE, SIZE).expand(5, -1, -1, -1, -1)  # a planner: one context, 5 candidates
    actions = torch.randn(5, 4, 4)
    seen = {"encoder": [], "condition": []}
    hooks = [model.vqvae.bottom_encoder.register_forward_hook(lambda m, i, o: seen["encoder"].append(i[0].shape[0])),
             model.top_prior.ctx_blocks.register_forward_hook(lambda m, i, o: seen["condition"].append(i[0].shape[0]))]
    shared = model.predict_codes(context, actions, 2)
    for h in hooks:
        h.remove()
    assert seen == {"encoder": [1], "condition": [1]}  # one clip through the VQ-VAE and the context stack
    for i in (0, 3):
        alone = model.predict_codes(context[i:i + 1], actions[i:i + 1], 1)
        assert torch.equal(shared["top"][i, 0], alone["top"][0, 0])
        assert torch.equal(shared["bottom"][i, 1], alone["bottom"][0, 0])
    two = torch.rand(2, 2, 3, SIZE, SIZE)  # distinct contexts: the per-row path
    both = model.predict_codes(two, actions[:2], 1)
    assert torch.equal(both["bottom"][1], model.predict_codes(two[1:], actions[1:2], 1)["bottom"][0])


def test_actions_change_the_prediction():
    model = tiny_model(top_k=1).eval()  # greedy: differences come from the actions, not the sampling
    context = torch.rand(1, 2, 3, SIZE, SIZE)
    up, down = torch.full((1, 4, 4), 3.0), torch.full((1, 4, 4), -3.0)
    top, bottom = random_codes(1)
    with torch.no_grad():
        assert not torch.allclose(model.top_prior(top, bottom[:, :2], step_actions(up, 2)),
                                  model.top_prior(top, bottom[:, :2], step_actions(down, 2)))
        slices = torch.arange(2, 6)
        assert not torch.allclose(model.bottom_prior(top, bottom, slices, step_actions(up, 1)),
                                  model.bottom_prior(top, bottom, slices, step_actions(down, 1)))
    va = model.predict(context, up, seed=0)
    assert not torch.equal(va, model.predict(context, down, seed=0))
    assert torch.equal(va, model.predict(context, up, seed=0))  # same actions, same seed: same video


def test_step_actions_concatenate_the_frames_of_a_step():
    actions = torch.arange(5 * 4, dtype=torch.float32).view(1, 5, 4)
    steps = step_actions(actions, 2)  # [1, 3, 8]
    assert steps.shape == (1, 3, 8)
    assert torch.equal(steps[0, 0], torch.cat([actions[0, 0], actions[0, 1]]))
    assert torch.equal(steps[0, 2], torch.cat([actions[0, 4], actions[0, 4]]))  # the last action held
    assert torch.equal(step_actions(actions, 1), actions)


# ---------------------------------------------------------------------------------------------- input checks
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
    with pytest.raises(ValueError, match="'bottom_codes'"):
        model.set_stage("top_prior").loss({"codes": torch.zeros(1, 3, 2, 2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"expected top codes \[B, >= 3, 2, 2\]"):
        model.loss({"codes": torch.zeros(1, 2, 2, 2), "bottom_codes": torch.zeros(1, 6, 4, 4)})
    with pytest.raises(ValueError, match="needs 'actions'"):
        model.set_stage("bottom_prior").loss({"frames": torch.rand(1, 6, 3, SIZE, SIZE)})
    with pytest.raises(ValueError, match=r"expected actions \[B, >= 5, 4\]"):
        model.loss({"frames": torch.rand(1, 6, 3, SIZE, SIZE), "actions": torch.zeros(1, 5, 3)})


def test_action_free_mode():
    model = tiny_model(action_dim=0).eval()
    video = model.predict(torch.rand(2, 2, 3, SIZE, SIZE), None, horizon=3, seed=0)
    assert video.shape == (2, 1, 3, 3, SIZE, SIZE)
    for stage in ("top_prior", "bottom_prior"):
        loss, _ = model.set_stage(stage).loss({"frames": torch.rand(2, 6, 3, SIZE, SIZE)})
        assert torch.isfinite(loss)


def test_stage_dataset_caches_codes_once():
    model = tiny_model().eval()
    clips = SyntheticClips(5, context_frames=2, future_frames=4, image_size=SIZE)
    assert model.stage_dataset(clips, "vqvae") is clips
    cached = model.stage_dataset(clips, "top_prior")
    assert isinstance(cached, CachedCodes) and len(cached) == 5
    bottom, top = model.encode(clips[3]["frames"][None])
    assert torch.equal(cached[3]["codes"], top[0]) and torch.equal(cached[3]["bottom_codes"].long(), bottom[0])
    raw = {k: torch.stack([clips[i][k] for i in range(5)]) for k in ("frames", "actions")}
    batch = {k: torch.stack([cached[i][k] for i in range(5)]) for k in ("codes", "bottom_codes", "actions")}
    for stage in ("top_prior", "bottom_prior"):
        model.set_stage(stage)
        assert torch.equal(model.loss(batch)[0], model.loss(raw)[0])


def test_bf16_autocast_trains_and_samples():
    model = tiny_model()
    batch = clip_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for stage in model.stages:
            model.set_stage(stage).train()
            loss, _ = model.loss(batch)
            loss.backward()
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
        video = model.predict(batch["frames"][:, :2], batch["actions"][:, 1:5], seed=0)
    assert video.dtype == torch.float32 and video.shape == (2, 1, 4, 3, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------- embeddings, planners
@pytest.mark.parametrize("horizon", [4, 5])  # 4: the bottom prior is skipped; 5: a slid window needs it
def test_embeddings_are_the_top_codebook_vectors_of_the_sampled_codes(horizon):
    model = tiny_model().eval()
    assert model.supports_embeddings
    context, actions = torch.rand(2, 2, 3, SIZE, SIZE), torch.randn(2, horizon, 4)
    emb = model.predict_embeddings(context, actions, 2, seed=4)  # [2, 2, T, 2*2*8]
    codes = model.predict_codes(context, actions, 2, seed=4)  # the same seed: the same top codes
    assert emb.shape == (2, 2, horizon, 32)
    for t in range(horizon):
        assert torch.equal(emb[:, :, t], model.code_embedding(codes["top"][:, :, t // 2]))
    goal = torch.rand(3, SIZE, SIZE)
    still = goal[None, None].expand(1, 4, -1, -1, -1)  # the goal held still for C + 2 frames
    assert torch.equal(model.embed(goal), model.code_embedding(model.encode(still)[1][0, -1]))
    assert model.embed(goal[None, None]).shape == (1, 1, 32)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 16, 16\]"):
        model.embed(torch.rand(3, 8, 8))


@pytest.mark.parametrize("optimizer, cost", [("cem", "pixel"), ("cem", "embedding"), ("icem", "pixel"),
                                             ("mppi", "embedding"), ("random", "pixel")])
def test_planners_work_with_video_vqvae(optimizer, cost):
    from agents.mpc import VisualMPC
    from agents.optimizers import CEM, ICEM, MPPI, RandomShooting

    opt = {"cem": lambda: CEM(num_samples=8, iterations=2, min_elites=2),
           "icem": lambda: ICEM(num_samples=8, iterations=2, min_elites=2),
           "mppi": lambda: MPPI(num_samples=8, iterations=2),
           "random": lambda: RandomShooting(num_samples=8)}[optimizer]()
    model = tiny_model().eval()
    agent = VisualMPC(model, opt, horizon=4, action_low=-np.ones(4),
                      action_high=np.ones(4), cost=cost, cost_weighting="all", predict_batch_size=5, seed=3)
    context = torch.rand(2, 3, SIZE, SIZE)
    actions, video = agent.plan_from(context, torch.rand(3, SIZE, SIZE))
    assert actions.shape == (4, 4) and float(actions.abs().max()) <= 1
    assert video.shape == (4, 3, SIZE, SIZE)
    if cost == "pixel":  # the recorded imagined video is the sample the planner scored
        assert float(agent.cost(video[None, None])) == pytest.approx(agent.records[-1].cost, rel=1e-5)


# ---------------------------------------------------------------------------------------------- trained tiny model
@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on `SyntheticClips` (a square moved by ``actions[:, :2]``), every stage in turn."""
    torch.manual_seed(0)
    model = VideoVQVAE(tiny_config())
    data = clip_batch(512)
    vq = fit_stage(model, "vqvae", data, steps=250, lr=2e-3)
    model.eval()
    bottom, top = model.encode(data["frames"])
    codes = {"codes": top, "bottom_codes": bottom, "actions": data["actions"]}
    # 400 steps per prior: at 200 the x-motion test passed on one CPU and failed on another (last-step gap 2.9
    # against 3.6 needed), and two of three other seeds fell short; at 400 seeds 0-2 clear it by 1.5x or more
    top_ce = fit_stage(model, "top_prior", codes, steps=400, lr=3e-3)
    bottom_ce = fit_stage(model, "bottom_prior", codes, steps=400, lr=3e-3)
    return {"model": model.eval(), "vqvae": vq, "top_prior": top_ce, "bottom_prior": bottom_ce}


def test_tiny_model_losses_fall(trained):
    assert np.mean(trained["vqvae"][-10:]) < 0.2 * np.mean(trained["vqvae"][:10])
    for stage in ("top_prior", "bottom_prior"):
        ce = trained[stage]
        assert ce[0] == pytest.approx(np.log(K), abs=0.3), stage  # about uniform over the 32 codes at the start
        assert np.mean(ce[-10:]) < ce[0] - 1.5, stage  # nats per code


def square_frames(y: int, x: int, t: int) -> torch.Tensor:
    """``t`` frames ``[t, 3, SIZE, SIZE]`` of the `SyntheticClips` square (4 pixels, on 0.1 grey) still at (y, x)."""
    frames = torch.full((t, 3, SIZE, SIZE), 0.1)
    frames[:, :, y:y + 4, x:x + 4] = torch.tensor([0.9, 0.8, 0.3])[:, None, None]
    return frames


def centroid(frames: torch.Tensor, axis: int) -> torch.Tensor:
    """Brightness-weighted centre along ``axis`` (0 = y, 1 = x) of what stands above the background."""
    w = (frames.mean(-3) - 0.1).clamp_min(0)  # [..., H, W]
    coord = torch.arange(SIZE, dtype=w.dtype)
    coord = coord[:, None] if axis == 0 else coord[None]
    return (w * coord).sum((-2, -1)) / w.sum((-2, -1)).clamp_min(1e-6)


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
    model = trained["model"].set_stage("bottom_prior")
    model.save_pretrained(tmp_path / "m")
    loaded = foresight.load(tmp_path / "m")
    assert isinstance(loaded, VideoVQVAE) and loaded.stage == "bottom_prior" and loaded.config == model.config
    # the loaded model freezes what the saved one froze (set_stage on load)
    assert [q.requires_grad for q in loaded.parameters()] == [q.requires_grad for q in model.parameters()]
    assert any(q.requires_grad for q in loaded.parameters()) and not all(q.requires_grad for q in loaded.parameters())
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert int(loaded.vqvae.top_quantizer.initialized) == 1
    context, actions = torch.rand(3, 2, 3, SIZE, SIZE), torch.randn(3, 5, 4)
    assert torch.equal(model.predict(context, actions, 2, seed=1), loaded.predict(context, actions, 2, seed=1))
    assert torch.equal(model.predict_embeddings(context, actions, seed=2),
                       loaded.predict_embeddings(context, actions, seed=2))


# ---------------------------------------------------------------------------------------------- training script
def test_train_script_trains_every_stage_and_refuses_a_random_vqvae(tmp_path):
    from experiments.common import UsageError
    from experiments.train_world_model import main

    common = ["--model", "video_vqvae", "--preset", "tiny", "data.root=synthetic", "data.synthetic_clips=16",
              "train.steps=3", "train.progress=false"]
    with pytest.raises(UsageError, match="holds no finished 'vqvae' stage"):
        main(common + ["--stage", "top_prior", f"run_dir={tmp_path / 'fresh'}"])
    export = main(common + [f"run_dir={tmp_path / 'run'}"])
    for stage in ("vqvae", "top_prior", "bottom_prior"):
        assert (tmp_path / "run" / stage / "checkpoints" / "last" / "config.json").is_file()
    model = foresight.load(export)
    assert isinstance(model, VideoVQVAE) and model.stage == "bottom_prior"
    assert int(model.vqvae.bottom_quantizer.initialized) == 1
    trained_vq = foresight.load(tmp_path / "run" / "vqvae")
    assert all(torch.equal(a, b) for a, b in zip(model.vqvae.state_dict().values(),
                                                 trained_vq.vqvae.state_dict().values()))  # frozen after stage 1
    video = model.predict(torch.rand(1, 2, 3, SIZE, SIZE), torch.zeros(1, 4, 4), seed=0)
    assert video.shape == (1, 1, 4, 3, SIZE, SIZE)
