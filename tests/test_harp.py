"""HARP world model: cache exactness, action conditioning, features causality, GAN gradients, save/load, learning."""

import dataclasses

import pytest
import torch

import foresight
from foresight.models.harp import CachedCodes, Harp, HarpConfig
from foresight.models.harp.sampling import sample_codes
from foresight.nn.discriminator import hinge_d_loss


def tiny_config(**changes) -> HarpConfig:
    return dataclasses.replace(foresight.preset(HarpConfig, "tiny"), **changes)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def moving_square_clips(n: int, t: int, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 4x4 white square on a dark background moved by the 2-D part of each 4-D action (pixels per step)."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.full((n, t, 3, size, size), 0.1)
    actions = torch.zeros(n, t - 1, 4)
    for i in range(n):
        y, x = torch.randint(2, size - 6, (2,), generator=g).tolist()
        for k in range(t):
            frames[i, k, :, y:y + 4, x:x + 4] = 0.9
            if k < t - 1:
                dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
                ny, nx = min(max(y + dy, 0), size - 4), min(max(x + dx, 0), size - 4)
                actions[i, k, :2] = torch.tensor([ny - y, nx - x], dtype=torch.float32)
                y, x = ny, nx
    return {"frames": frames, "actions": actions}


def test_registered_and_presets_build():
    assert foresight.get_model_class("harp") is Harp
    for name in ("tiny", "quick", "paper"):
        cfg = foresight.preset(HarpConfig, name)
        cfg.validate()
    assert foresight.preset(HarpConfig, "paper").grid == 16  # 16x16 codes per 64x64 frame, as in the paper


def test_cached_logits_equal_full_recompute():
    torch.manual_seed(0)
    cfg = tiny_config(context_frames=2, future_frames=2)
    model = Harp(cfg).eval()
    tr = model.transformer
    b, n = 2, tr.codes_per_frame
    codes = torch.randint(0, cfg.codebook_size, (b, 4, cfg.grid, cfg.grid))
    ctx = torch.rand(b, 2, 3, 16, 16)
    actions = torch.randn(b, 2, 4)
    with torch.no_grad():
        full = tr(codes, ctx, actions)  # [B, F*N, K]
        content = tr.content(codes, ctx)
        cache = tr.transformer.new_cache(4 * n)
        tr.prefill(tr.shifted(content)[:, :2 * n], None, cache)  # context slots in one pass
        frame_act = tr.frame_actions(actions, 4, 2)
        prev = tr.shifted(content)
        steps = [tr.prefill(prev[:, p:p + 1], frame_act, cache)[:, 0] for p in range(2 * n, 4 * n)]
    cached = torch.stack(steps, dim=1)
    assert cache.length == 4 * n
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-4)


def test_single_token_step_equals_general_cached_forward():
    """The functional one-token path used by sampling computes what the module path computes."""
    torch.manual_seed(0)
    tr = Harp(tiny_config()).eval().transformer.transformer
    x = torch.randn(3, 7, tr.blocks[0].ln1.normalized_shape[0])
    with torch.no_grad():
        ref_cache, fast_cache = tr.new_cache(7), tr.new_cache(7)
        ref = tr(x, cache=ref_cache)  # [3, 7, D], all tokens at once
        tr(x[:, :3], cache=fast_cache)
        fast = torch.stack([tr.step(x[:, p], fast_cache) for p in range(3, 7)], dim=1)
    assert fast_cache.length == 7
    assert torch.allclose(fast, ref[:, 3:], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="overflow"):
        tr.step(x[:, 0], fast_cache)


@pytest.mark.parametrize("horizon", [3, 5])  # 5 > future_frames=3: the sliding scheme
def test_cached_sampling_matches_uncached(horizon):
    torch.manual_seed(0)
    model = Harp(tiny_config()).eval()
    ctx = torch.rand(2, 1, 3, 16, 16)
    actions = torch.randn(2, horizon, 4)
    a = model.predict_codes(ctx, actions, 2, seed=3, use_cache=True)
    b = model.predict_codes(ctx, actions, 2, seed=3, use_cache=False)
    assert a.shape == (2, 2, horizon, 4, 4)
    assert torch.equal(a, b)


def test_shared_context_is_encoded_once_and_matches_per_row():
    torch.manual_seed(0)
    model = Harp(tiny_config()).eval()
    ctx = torch.rand(1, 1, 3, 16, 16).expand(3, -1, -1, -1, -1)
    codes = model.encode(ctx)
    actions = torch.randn(3, 3, 4)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    shared = sample_codes(model.transformer, codes, ctx, actions, horizon=3, generator=g1)
    # a tiny perturbation of one context row defeats the sharing; same codes -> same samples for the other rows
    ctx2 = ctx.clone()
    ctx2[2] += 0.0
    separate = sample_codes(model.transformer, codes.clone(), ctx2 * 1.0, actions, horizon=3, generator=g2)
    assert torch.equal(shared, separate)


def test_action_conditioning_changes_the_prediction():
    torch.manual_seed(0)
    model = Harp(tiny_config(top_k=1)).eval()  # greedy: differences come from the actions, not the sampling
    ctx = torch.rand(1, 1, 3, 16, 16)
    up, down = torch.full((1, 3, 4), 3.0), torch.full((1, 3, 4), -3.0)
    with torch.no_grad():
        tr, codes = model.transformer, model.encode(ctx)
        full = torch.cat([codes, codes.expand(-1, 3, -1, -1)], dim=1)
        la, lb = tr(full, ctx, up), tr(full, ctx, down)
    assert not torch.allclose(la, lb)
    va = model.predict(ctx, up, seed=0)
    vb = model.predict(ctx, down, seed=0)
    assert not torch.equal(va, vb)
    # ...while the same actions reproduce the same video
    assert torch.equal(va, model.predict(ctx, up, seed=0))


def test_action_free_mode():
    model = Harp(tiny_config(action_dim=0)).eval()
    video = model.predict(torch.rand(2, 1, 3, 16, 16), None, horizon=2, seed=0)
    assert video.shape == (2, 1, 2, 3, 16, 16) and 0 <= float(video.min()) and float(video.max()) <= 1
    loss, _ = model.set_stage("transformer").loss({"frames": torch.rand(2, 4, 3, 16, 16)})
    assert torch.isfinite(loss)


def test_features_are_causal_and_differentiable():
    torch.manual_seed(0)
    model = Harp(tiny_config(context_frames=1, future_frames=3)).eval()
    frames = torch.rand(2, 4, 3, 16, 16)
    actions = torch.randn(2, 3, 4)
    feats = model.features(frames, actions)
    assert feats.shape == (2, 4, model.feature_dim)
    frames2, actions2 = frames.clone(), actions.clone()
    frames2[:, 2:] = torch.rand(2, 2, 3, 16, 16)  # change frames 2, 3
    actions2[:, 1:] = torch.randn(2, 2, 4)  # change actions 1, 2 (action t leads from frame t to t+1)
    feats2 = model.features(frames2, actions2)
    assert torch.allclose(feats[:, :2], feats2[:, :2], atol=1e-5)  # features 0, 1 see frames <= t, actions < t
    assert not torch.allclose(feats[:, 2:], feats2[:, 2:])
    model.features(frames, actions).sum().backward()
    assert model.transformer.tok_emb.weight.grad is not None


def test_features_readout_matches_sequence_state_without_actions():
    torch.manual_seed(0)
    model = Harp(tiny_config(action_dim=0, context_resnet=False)).eval()
    frames = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        feats = model.features(frames)
        tr, codes = model.transformer, model.encode(frames)
        x = tr.slot_inputs(tr.shifted(tr.content(codes, None)), 0, None)
        h = tr.transformer(x)  # [1, 3N, D]
    n = tr.codes_per_frame
    assert torch.allclose(feats[:, 0], h[:, n], atol=1e-5)
    assert torch.allclose(feats[:, 1], h[:, 2 * n], atol=1e-5)


def test_gan_terms_train_disjoint_parameters():
    torch.manual_seed(0)
    # decay 1 and no restarts: the codebook does not move, so the reconstruction can be recomputed exactly
    model = Harp(tiny_config(disc_start=0, ema_decay=1.0, dead_code_threshold=0.0)).set_stage("tokenizer").train()
    frames = torch.rand(2, 4, 3, 16, 16)
    loss, metrics = model.loss({"frames": frames})
    assert "g_loss" in metrics and metrics["gan_weight"] > 0
    loss.backward()
    tok = model.tokenizer
    got = [p.grad.clone() for p in tok.discriminator.parameters()]
    tok.zero_grad()
    with torch.no_grad():
        rec, _, _ = tok.reconstruct(frames.flatten(0, 1))
    hinge_d_loss(tok.discriminator(frames.flatten(0, 1)), tok.discriminator(rec)).backward()
    for g, p in zip(got, tok.discriminator.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)  # only the hinge loss reaches the discriminator


def test_gan_is_off_before_disc_start():
    model = Harp(tiny_config(disc_start=2)).set_stage("tokenizer").train()
    batch = {"frames": torch.rand(1, 2, 3, 16, 16)}
    for step in range(3):
        _, metrics = model.loss(batch)
        assert ("g_loss" in metrics) == (step >= 2)
    assert int(model.tokenizer.step) == 3


def test_missing_lpips_weights_fail_clearly(monkeypatch):
    import foresight.metrics.lpips as lp
    from foresight.metrics.weights import WeightsNotFoundError

    def missing(*args, **kwargs):
        raise WeightsNotFoundError("no weights here")

    monkeypatch.setattr(lp, "find_lpips_backbone", missing)
    model = Harp(tiny_config(perceptual_weight=1.0)).set_stage("tokenizer").train()
    with pytest.raises(RuntimeError, match="perceptual_weight=0"):
        model.loss({"frames": torch.rand(1, 2, 3, 16, 16)})


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Harp(tiny_config()).set_stage("tokenizer").train()
    model.loss({"frames": torch.rand(1, 4, 3, 16, 16)})  # initialises the codebook, counts a step
    model.set_stage("transformer")
    model.save_pretrained(tmp_path / "m")
    loaded = foresight.load(tmp_path / "m")
    assert isinstance(loaded, Harp) and loaded.stage == "transformer"
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    ctx, actions = torch.rand(2, 1, 3, 16, 16), torch.randn(2, 3, 4)
    assert torch.equal(model.predict(ctx, actions, seed=1), loaded.predict(ctx, actions, seed=1))


def test_stage_dataset_caches_codes_once():
    torch.manual_seed(0)
    model = Harp(tiny_config()).eval()
    clips = moving_square_clips(5, 4)
    dataset = [{"frames": clips["frames"][i], "actions": clips["actions"][i], "task": i % 2} for i in range(5)]
    cached = model.stage_dataset(dataset, "transformer")
    assert isinstance(cached, CachedCodes) and len(cached) == 5
    assert torch.equal(cached[3]["codes"], model.encode(clips["frames"][3]))
    assert cached[3]["context"].dtype == torch.uint8 and int(cached[3]["task"]) == 1
    model.set_stage("transformer")
    batch = {k: torch.stack([cached[i][k] for i in range(5)]) for k in ("codes", "actions", "context")}
    loss_cached, _ = model.loss(batch)
    loss_raw, _ = model.loss(clips)
    assert torch.allclose(loss_cached, loss_raw, atol=1e-4)
    assert model.stage_dataset(dataset, "tokenizer") is dataset


def test_tiny_model_losses_fall():
    torch.manual_seed(0)
    model = Harp(tiny_config(disc_start=10_000))
    data = moving_square_clips(16, 4)
    model.set_stage("tokenizer").train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        idx = torch.randint(0, 16, (8,))
        loss, _ = model({"frames": data["frames"][idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    model.set_stage("transformer").train()
    cached = model.stage_dataset([{"frames": f, "actions": a} for f, a in zip(data["frames"], data["actions"])])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    ces = []
    for step in range(40):
        idx = torch.randint(0, 16, (8,)).tolist()
        batch = {k: torch.stack([cached[i][k] for i in idx]) for k in ("codes", "actions", "context")}
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ces.append(float(loss.detach()))
    assert sum(ces[-5:]) / 5 < sum(ces[:5]) / 5 - 0.4  # nats per code; ln(32) = 3.47 at the start


def test_bad_inputs_raise_value_errors():
    model = Harp(tiny_config()).eval()
    with pytest.raises(ValueError, match="4"):
        model.predict(torch.rand(1, 1, 3, 16, 16), torch.randn(1, 3, 2))
    with pytest.raises(ValueError, match="codes"):
        model.set_stage("transformer").loss({"actions": torch.randn(1, 3, 4)})
    with pytest.raises(ValueError, match="at most"):
        model.features(torch.rand(1, 6, 3, 16, 16))


def test_clip_dataset_fast_cache_matches_clip_by_clip():
    from foresight.data.clips import ClipDataset

    torch.manual_seed(0)
    model = Harp(tiny_config()).eval()
    clips = moving_square_clips(2, 9)
    episodes = [{"frames": (clips["frames"][i].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
                 "actions": clips["actions"][i].numpy(), "task": f"task{i}"} for i in range(2)]
    ds = ClipDataset(episodes, context=1, future=3, window_step=2, with_states=False)
    assert model._is_plain_clip_dataset(ds)  # the frame-level path, not clip by clip
    fast = model.stage_dataset(ds, "transformer")
    slow = model.cache_codes([ds[i] for i in range(len(ds))])
    assert len(fast) == len(ds) == len(slow)
    for i in range(len(ds)):
        for k in ("codes", "actions", "context", "task"):
            assert torch.equal(fast[i][k], slow[i][k]), k
    # codes stored once per used frame (at most the 18 stored), not once per clip (len(ds) clips x 4 frames)
    assert fast.frame_codes.shape[0] <= 18 < len(ds) * 4 and torch.equal(fast.codes, slow.codes)


def test_fast_cache_reads_context_pixels_from_frames_on_disk(tmp_path):
    from foresight.data.clips import ClipDataset
    from foresight.data.frame_store import DiskFrames

    torch.manual_seed(0)
    model = Harp(tiny_config()).eval()
    clips = moving_square_clips(2, 9)
    episodes = [{"frames": (clips["frames"][i].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
                 "actions": clips["actions"][i].numpy(), "task": f"task{i}"} for i in range(2)]
    from foresight.data.episodes import EpisodeDataset, EpisodeWriter

    writer = EpisodeWriter(tmp_path / "store")
    for i, ep in enumerate(episodes):
        writer.write({"frames": ep["frames"], "actions": ep["actions"]}, task=ep["task"], variation=i, split="train")
    kw = dict(context=1, future=3, window_step=2, with_states=False)
    ram = ClipDataset(EpisodeDataset(tmp_path / "store"), **kw)
    disk = ClipDataset(EpisodeDataset(tmp_path / "store"), frames_dir=tmp_path / "frames", **kw)
    assert isinstance(disk.frames, DiskFrames) and model._is_plain_clip_dataset(disk)
    a, b = model.stage_dataset(ram, "transformer"), model.stage_dataset(disk, "transformer")
    assert b.frames is disk.frames  # the context pixels stay in the file
    for i in range(len(ram)):
        for k in ("codes", "actions", "context", "task"):
            assert torch.equal(a[i][k], b[i][k]), k


def test_attention_dropout_is_configured_separately():
    from foresight.nn.transformer import CausalTransformer
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    only_attn = CausalTransformer(dim=16, layers=1, heads=2, dropout=0.0, attn_dropout=0.5).train()
    assert not torch.equal(only_attn(x), only_attn(x))  # attention probabilities are dropped
    neither = CausalTransformer(dim=16, layers=1, heads=2, dropout=0.0, attn_dropout=0.0).train()
    assert torch.equal(neither(x), neither(x))
    same = CausalTransformer(dim=16, layers=1, heads=2, dropout=0.3)  # attn_dropout defaults to dropout
    assert same.blocks[0].attn.dropout == 0.3
    cfg = foresight.preset(HarpConfig, "quick")
    assert cfg.attn_dropout == 0.0 and cfg.dropout == 0.1  # quick keeps CPU attention on the fused kernel
    assert Harp(tiny_config(attn_dropout=0.2)).transformer.transformer.blocks[0].attn.dropout == 0.2


@pytest.mark.parametrize("horizon", [3, 5])  # 5 > future_frames=3: slides re-run frames after the shared prefix
def test_shared_context_prefix_gives_the_same_codes_as_copying_it(horizon):
    torch.manual_seed(0)
    model = Harp(tiny_config()).eval()
    ctx = torch.rand(1, 1, 3, 16, 16).expand(4, -1, -1, -1, -1)  # one context, 4 candidates (a planner's call)
    codes = model.encode(ctx)
    actions = torch.randn(4, horizon, 4)
    kw = dict(horizon=horizon, num_samples=2)
    shared = sample_codes(model.transformer, codes, ctx, actions, generator=torch.Generator().manual_seed(1), **kw)
    copied = sample_codes(model.transformer, codes, ctx, actions, generator=torch.Generator().manual_seed(1),
                          share_context=False, **kw)
    assert torch.equal(shared, copied)
    # and the candidates really differ (the comparison is not between constant outputs)
    assert not torch.equal(shared[0], shared[1])
