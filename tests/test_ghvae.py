"""GHVAE: greedy stages, frozen modules, feature cache, sampling, action conditioning, save/load and growth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import foresight
from foresight.config import preset
from foresight.data.clips import ClipDataset
from foresight.models.ghvae import GHVAE, FeatureCacheDataset, GHVAEConfig, module_shapes
from foresight.registry import get_model_class

torch.set_num_threads(1)


def tiny_config(**changes) -> GHVAEConfig:
    return dataclasses.replace(preset(GHVAEConfig, "tiny"), **changes)


def make_model(seed: int = 0, **changes) -> GHVAE:
    torch.manual_seed(seed)
    return GHVAE(tiny_config(**changes))


@pytest.fixture(scope="module")
def clips() -> ClipDataset:
    """Moving-square episodes whose motion follows the actions (so actions carry information)."""
    rng = np.random.default_rng(0)
    episodes = []
    for e in range(4):
        frames = np.zeros((12, 16, 16, 3), np.uint8)
        actions = rng.uniform(-1, 1, size=(11, 4)).astype(np.float32)
        y, x = 6, 6
        for t in range(12):
            frames[t, y:y + 4, x:x + 4] = (255, 128 + 20 * e, 0)
            if t < 11:
                y = int(np.clip(y + np.sign(actions[t, 0]), 0, 12))
                x = int(np.clip(x + np.sign(actions[t, 1]), 0, 12))
        episodes.append({"frames": frames, "actions": actions, "task": "square"})
    return ClipDataset(episodes, context=2, future=3, augment_shift=2)


def batch_of(ds, n: int = 4) -> dict:
    return ds.get_batch(np.arange(n), augment=False)


def train_steps(model: GHVAE, batch: dict, steps: int = 3, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def module_state(model: GHVAE, k: int) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.stack[k - 1].state_dict().items()}


def test_registered_presets_and_shapes():
    assert get_model_class("ghvae") is GHVAE
    for name in ("tiny", "quick", "paper"):
        cfg = preset(GHVAEConfig, name)
        shapes = module_shapes(cfg)
        assert len(shapes) == cfg.num_modules
        assert all(a.size >= b.size and a.channels <= b.channels for a, b in zip(shapes, shapes[1:]))
        assert shapes[0].size < cfg.image_size
    assert preset(GHVAEConfig, "paper").num_modules == 6
    model = make_model()
    assert model.stages == ("module1", "module2", "finetune")
    assert make_model(finetune=False).stages == ("module1", "module2")
    # Module k's shapes never depend on K: the basis of growing a stack.
    assert module_shapes(tiny_config(num_modules=3))[:2] == module_shapes(tiny_config())


def test_stage_sets_trainable_parameters_and_depth():
    model = make_model()
    assert model.stage == "module1" and model.depth == 1
    ids = lambda ps: {id(p) for p in ps}
    assert ids(model.trainable_parameters()) == ids(model.stack[0].parameters())
    model.set_stage("module2")
    assert model.depth == 2 and model.frozen_modules == 1
    assert ids(model.trainable_parameters()) == ids(model.stack[1].parameters())
    model.train()  # what a trainer calls: the frozen module must stay in eval mode
    assert not model.stack[0].training and model.stack[1].training
    model.set_stage("finetune")
    assert model.depth == 2 and ids(model.trainable_parameters()) == ids(model.parameters())
    model.stage = "module2"  # plain assignment (what WorldModel.from_pretrained does) freezes as well
    assert ids(model.trainable_parameters()) == ids(model.stack[1].parameters())
    with pytest.raises(ValueError, match="unknown stage"):
        model.set_stage("module3")


def test_frozen_module_gets_no_gradient_and_does_not_change(clips):
    model = make_model()
    train_steps(model, batch_of(clips), steps=2)
    model.set_stage("module2")
    before1, before2 = module_state(model, 1), module_state(model, 2)
    cached = model.stage_dataset(clips, "module2")
    batch = cached.get_batch(np.arange(4))
    loss, _ = model(batch)
    loss.backward()
    assert all(p.grad is None for p in model.stack[0].parameters())
    # every module-2 weight (encoder, decoder, prior, posterior) is in the graph
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.stack[1].parameters())
    # An optimizer over ALL parameters (as a careless caller might build) still leaves module 1 alone.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(batch)[0].backward()
        opt.step()
    after1, after2 = module_state(model, 1), module_state(model, 2)
    assert all(torch.equal(before1[n], after1[n]) for n in before1)
    assert any(not torch.equal(before2[n], after2[n]) for n in before2)


def test_cached_features_equal_recomputed(clips):
    model = make_model(cache_dtype="float32", num_modules=3)
    model.set_stage("module3")
    cached = model.stage_dataset(clips, "module3")
    assert isinstance(cached, FeatureCacheDataset) and len(cached) == len(clips)
    assert set(cached.features) == {"h1", "h2"}
    assert model.stage_dataset(clips, "module1") is clips  # nothing frozen, nothing to cache
    idx = np.arange(len(clips))
    batch = cached.get_batch(idx, rng=np.random.default_rng(0))  # the cache ignores augmentation
    plain = clips.get_batch(idx, augment=False)
    assert torch.equal(batch["frames"], plain["frames"])
    recomputed = model.encode(plain["frames"].flatten(0, 1), 2)
    for j, h in enumerate(recomputed, start=1):
        torch.testing.assert_close(batch[f"h{j}"], h.view(*batch[f"h{j}"].shape), rtol=1e-5, atol=1e-5)
    torch.manual_seed(3)
    loss_cached, _ = model.loss(batch)
    torch.manual_seed(3)
    loss_plain, _ = model.loss(plain)
    torch.testing.assert_close(loss_cached, loss_plain, rtol=1e-5, atol=1e-6)
    # Overlapping windows share frames: each distinct frame is stored once.
    assert cached.features["h1"].shape[0] == len(np.unique(cached.index.numpy())) < len(clips) * 5
    # Single items (what a DataLoader fetches) carry the features too.
    item = cached[1]
    torch.testing.assert_close(item["h2"], batch["h2"][1])
    # float16 cache (the default) is within half precision of the float32 features.
    half = make_model(num_modules=3).set_stage("module3")
    half.load_state_dict(model.state_dict())
    h16 = half.stage_dataset(clips, "module3").features["h2"]
    assert h16.dtype == torch.float16
    torch.testing.assert_close(h16.float(), cached.features["h2"], rtol=1e-2, atol=1e-2)


def test_cache_of_a_plain_sequence_dataset(clips):
    model = make_model(cache_dtype="float32").set_stage("module2")
    items = [clips.get_batch([i], augment=False) for i in range(3)]
    items = [{k: v[0] for k, v in item.items()} for item in items]  # a list of clip dicts
    cached = model.stage_dataset(items)
    assert cached.index.shape == (3, 5) and cached.features["h1"].shape[0] == 15
    batch = cached.get_batch([2, 0])
    expected = model.encode(torch.stack([items[2]["frames"], items[0]["frames"]]).flatten(0, 1), 1)[0]
    torch.testing.assert_close(batch["h1"].flatten(0, 1), expected, rtol=1e-5, atol=1e-5)


def test_checkpointed_frozen_decoders_give_the_same_gradients(clips):
    grads = []
    for checkpoint in (False, True):
        model = make_model(num_modules=3, checkpoint_frozen=checkpoint, cache_dtype="float32").set_stage("module3")
        batch = model.stage_dataset(clips).get_batch(np.arange(3))
        torch.manual_seed(0)
        model(batch)[0].backward()
        grads.append([p.grad.clone() for p in model.stack[2].parameters()])
        assert all(p.grad is None for p in model.stack[:2].parameters())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cached_features_with_wrong_shape_are_rejected(clips):
    model = make_model().set_stage("module2")
    batch = clips.get_batch(np.arange(2), augment=False)
    batch["h1"] = torch.zeros(2, 5, 3, 8, 8)
    with pytest.raises(ValueError, match="cached feature h1"):
        model.loss(batch)


def test_prior_sampling_is_seedable_and_stochastic(clips):
    model = make_model()
    train_steps(model, batch_of(clips), steps=3)  # a fresh model copies the last frame whatever z is
    batch = batch_of(clips, 2)
    context, actions = batch["frames"][:, :2], batch["actions"][:, 1:4]
    a = model.predict(context, actions, num_samples=3, seed=7)
    b = model.predict(context, actions, num_samples=3, seed=7)
    c = model.predict(context, actions, num_samples=3, seed=8)
    assert a.shape == (2, 3, 3, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, 1])  # samples of one input differ
    gen = torch.Generator().manual_seed(7)
    torch.testing.assert_close(model.predict(context, actions, num_samples=3, generator=gen), a)


def test_action_conditioning_changes_prediction(clips):
    model = make_model()
    train_steps(model, batch_of(clips), steps=3)
    context = batch_of(clips, 2)["frames"][:, :2]
    actions = torch.zeros(2, 3, 4)
    p0 = model.predict(context, actions, seed=0)
    p1 = model.predict(context, actions + 1.0, seed=0)
    assert (p0 - p1).abs().max() > 1e-4
    with pytest.raises(ValueError, match="action-conditioned"):
        model.predict(context, None, horizon=3)


def test_action_free_mode(clips):
    model = make_model(action_dim=0)
    batch = batch_of(clips)
    batch.pop("actions")
    losses = train_steps(model, batch, steps=2)
    assert all(np.isfinite(losses))
    out = model.predict(batch["frames"][:, :2], None, horizon=5, seed=0)
    assert out.shape == (4, 1, 5, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_training_lowers_loss_and_prediction_is_valid(clips):
    model = make_model()
    batch = batch_of(clips)
    losses = train_steps(model, batch, steps=25, lr=3e-3)
    assert losses[-1] < losses[0]
    out = model.predict(batch["frames"][:, :2], batch["actions"][:, 1:4], seed=0, num_samples=2)
    assert out.shape == (4, 2, 3, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_save_load_partial_stack_and_resume_next_module(clips, tmp_path):
    model = make_model()
    train_steps(model, batch_of(clips), steps=3)  # module 1 trained, module 2 untouched
    model.save_pretrained(tmp_path / "m1")
    loaded = foresight.load(tmp_path / "m1")
    assert isinstance(loaded, GHVAE) and loaded.stage == "module1" and loaded.depth == 1
    for (n, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), n
    batch = batch_of(clips, 2)
    context, actions = batch["frames"][:, :2], batch["actions"][:, 1:4]
    torch.testing.assert_close(loaded.predict(context, actions, seed=1), model.predict(context, actions, seed=1))
    # Resume with the next module: module 1 stays exactly as saved.
    loaded.set_stage("module2")
    saved1 = module_state(loaded, 1)
    train_steps(loaded, loaded.stage_dataset(clips, "module2").get_batch(np.arange(4)), steps=3)
    assert all(torch.equal(saved1[n], v) for n, v in module_state(loaded, 1).items())
    loaded.save_pretrained(tmp_path / "m2")
    again = foresight.load(tmp_path / "m2")
    assert again.stage == "module2" and again.depth == 2
    # loading restores the stage's freezing too, not just its name
    assert {id(p) for p in again.trainable_parameters()} == {id(p) for p in again.stack[1].parameters()}


def test_grow_adds_a_module_without_touching_the_trained_ones(clips, tmp_path):
    model = make_model()
    train_steps(model, batch_of(clips), steps=2)
    model.set_stage("module2")
    train_steps(model, model.stage_dataset(clips, "module2").get_batch(np.arange(4)), steps=2)
    model.save_pretrained(tmp_path / "k2")
    bigger = foresight.load(tmp_path / "k2").grow()
    assert bigger.num_modules == 3 and bigger.stage == "module3" and bigger.depth == 3
    assert bigger.stages == ("module1", "module2", "module3", "finetune")
    for k in (1, 2):
        old, new = module_state(model, k), module_state(bigger, k)
        assert all(torch.equal(old[n], new[n]) for n in old)
    ids = {id(p) for p in bigger.trainable_parameters()}
    assert ids == {id(p) for p in bigger.stack[2].parameters()}
    # At depth 2 the grown model predicts exactly what the 2-module model predicts.
    batch = batch_of(clips, 2)
    context, actions = batch["frames"][:, :2], batch["actions"][:, 1:4]
    bigger.set_stage("module2")
    torch.testing.assert_close(bigger.predict(context, actions, seed=0), model.predict(context, actions, seed=0))
    bigger.set_stage("module3")
    cached = bigger.stage_dataset(clips)
    assert set(cached.features) == {"h1", "h2"}
    train_steps(bigger, cached.get_batch(np.arange(4)), steps=2)
    for k in (1, 2):
        old, new = module_state(model, k), module_state(bigger, k)
        assert all(torch.equal(old[n], new[n]) for n in old)
    with pytest.raises(ValueError, match="more than"):
        bigger.grow(2)


def test_features_and_embeddings_shapes(clips):
    model = make_model().set_stage("finetune")
    frames = batch_of(clips, 2)["frames"]  # [2, 5, 3, 16, 16]
    feats = model.features(frames)
    assert feats.shape == (2, 5, model.feature_dim)
    # causal: changing a later frame leaves earlier features untouched
    changed = frames.clone()
    changed[:, -1] = 1 - changed[:, -1]
    torch.testing.assert_close(model.features(changed)[:, :-1], feats[:, :-1])
    emb = model.embed(frames)
    assert emb.shape[:2] == (2, 5) and emb.ndim == 3
    pe = model.predict_embeddings(frames[:, :2], torch.zeros(2, 3, 4), seed=0)
    assert pe.shape == (2, 1, 3, emb.shape[-1])


def test_checkpoint_from_before_the_action_path_loads_as_the_old_model(clips, tmp_path):
    """config.json without ``action_in_decoder`` / ``latent_weight`` and weights without the decoder's FiLM
    layer and the next-feature head (what older code wrote): loads, and predicts what the prior-only model did."""
    import json

    from safetensors.torch import load_file, save_file

    old = make_model(action_in_decoder=False)
    train_steps(old, batch_of(clips), steps=2)
    old.save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("action_in_decoder", "latent_weight"):
        del meta["config"][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    weights = load_file(str(tmp_path / "old" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".next_feature." not in k}, str(tmp_path / "old" / "model.safetensors"))
    loaded = foresight.load(tmp_path / "old")
    assert loaded.config.action_in_decoder and loaded.stack[0].decoder.action is not None
    assert all(torch.count_nonzero(p) == 0 for p in loaded.stack[0].decoder.action.parameters())
    batch = batch_of(clips, 2)
    context, actions = batch["frames"][:, :2], batch["actions"][:, 1:4]
    torch.testing.assert_close(loaded.predict(context, actions, seed=3), old.predict(context, actions, seed=3))


@pytest.mark.parametrize("stage", ["module1", "module2"])
def test_latent_rollout_is_the_deepest_level_of_the_pixel_rollout(clips, stage):
    """predict_embeddings == the deepest states the pixel rollout decodes when it carries its deepest level
    (same seed, bit-close); its first step equals the default pixel rollout's; no pixels are decoded."""
    model = make_model(num_modules=2)
    train_steps(model, batch_of(clips), steps=3)
    model.set_stage(stage)
    batch = batch_of(clips, 2)
    context, actions = batch["frames"][:, :2], torch.randn(2, 4, 4)
    latent = model.predict_embeddings(context, actions, num_samples=3, seed=5)
    d = model.depth
    assert latent.shape == (2, 3, 4, model.embedding_dim) == (2, 3, 4, model.embed(context).shape[-1])
    with torch.no_grad():
        frames, carried = model._rollout(context, actions, 3, torch.Generator().manual_seed(5), 4, carry_deepest=True)
        _, default = model._rollout(context, actions, 3, torch.Generator().manual_seed(5), 4)
    embed = model.state_embedding
    torch.testing.assert_close(latent, embed(carried.flatten(0, 1)).view(2, 3, 4, -1), rtol=0, atol=1e-5)
    torch.testing.assert_close(latent[:, :, 0], embed(default[:, 0]).view(2, 3, -1), rtol=0, atol=1e-5)
    # The carried pixel rollout's frames are what `predict` shows for step 1 (both decode the same state).
    video = model.predict(context, actions, num_samples=3, seed=5)
    torch.testing.assert_close(video[:, :, 0], frames[:, 0].view(2, 3, 3, 16, 16), rtol=0, atol=1e-5)
    # No pixel decoding and no module below d after the context: count decoder-output and lower-encoder calls.
    calls = []
    hooks = [model.stack[d - 1].decoder.out.register_forward_hook(lambda *a: calls.append("out"))]
    hooks += [m.encoder.register_forward_hook(lambda *a: calls.append("enc")) for m in model.stack[:d]]
    model.predict_embeddings(context, actions, num_samples=3, seed=5)
    for h in hooks:
        h.remove()
    assert calls == ["enc"] * d  # the context encoding only
    # One context expanded over many candidates (how planners call it) is encoded once, with the same result.
    one = context[:1].expand(5, -1, -1, -1, -1)
    calls.clear()
    hook = model.stack[0].encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    shared = model.predict_embeddings(one, actions[:1].expand(5, -1, -1), num_samples=2, seed=1)
    hook.remove()
    assert calls == [2]  # 1 context x 2 frames
    plain = model.predict_embeddings(one.contiguous(), actions[:1].expand(5, -1, -1), num_samples=2, seed=1)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)


def test_a_row_predicted_alone_gets_the_sample_it_got_in_a_batch(clips):
    """Noise is per (sample, step), shared by the batch rows: planners rank candidates under common random
    numbers, and the chosen plan re-run alone is the sample that was scored (pixels of the latent rollout too)."""
    model = make_model(num_modules=2)
    train_steps(model, batch_of(clips), steps=3)
    model.set_stage("module2")
    context = batch_of(clips, 1)["frames"][:, :2].expand(6, -1, -1, -1, -1)
    actions = torch.randn(6, 4, 4)
    batch = model.predict_embeddings(context, actions, num_samples=2, seed=9)
    alone = model.predict_embeddings(context[4:5], actions[4:5], num_samples=2, seed=9)
    torch.testing.assert_close(alone[0], batch[4], rtol=0, atol=1e-5)
    assert not torch.allclose(batch[4, 0], batch[4, 1])  # the S samples still differ
    frames = model.predict_embedding_frames(context[4:5], actions[4:5], num_samples=2, seed=9)
    _, carried = model._rollout(context[4:5], actions[4:5], 2, torch.Generator().manual_seed(9), 4,
                                carry_deepest=True)
    assert frames.shape == (1, 2, 4, 3, 16, 16)
    torch.testing.assert_close(model.state_embedding(carried.flatten(0, 1)).view(1, 2, 4, -1), alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_frame_cache_reads_either_frame_layout(clips, channels_last):
    """The per-frame cache reads a ClipDataset-like ``frames`` array stored [N, H, W, 3] or [N, 3, H, W]."""

    class Windows:
        def __init__(self, frames_chw: np.ndarray):
            self.frames = frames_chw.transpose(0, 2, 3, 1).copy() if channels_last else frames_chw
            self.starts, self.stride, self.clip_length = np.array([0, 2, 4]), 1, 5
            self._chw = frames_chw

        def __len__(self):
            return len(self.starts)

        def get_batch(self, idx, augment=False):
            fidx = self.starts[np.asarray(idx)][:, None] + np.arange(5)[None]
            return {"frames": torch.from_numpy(self._chw[fidx]).float() / 255.0}

    rng = np.random.default_rng(1)
    ds = Windows(rng.integers(0, 256, size=(9, 3, 16, 16), dtype=np.uint8))
    model = make_model(cache_dtype="float32").set_stage("module2")
    cached = model.stage_dataset(ds)
    assert cached.features["h1"].shape[0] == 9  # 9 distinct frames, not 3 clips x 5
    batch = cached.get_batch([1, 2])
    expected = model.encode(batch["frames"].flatten(0, 1), 1)[0]
    torch.testing.assert_close(batch["h1"].flatten(0, 1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache_dtype", ["bfloat16", "float32"])
def test_features_of_frames_on_disk_go_to_disk_and_equal_the_memory_cache(tmp_path, cache_dtype):
    from foresight.data.episodes import EpisodeDataset, EpisodeWriter
    from foresight.data.frame_store import DiskFrames
    from foresight.models.ghvae.cache import DiskFeatures

    rng = np.random.default_rng(0)
    writer = EpisodeWriter(tmp_path / "store")
    for e in range(3):
        writer.write({"frames": rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8),
                      "actions": rng.uniform(-1, 1, (8, 4)).astype(np.float32)}, task="t", variation=e, split="train")
    kw = dict(context=2, future=3, augment_shift=0)
    ram = ClipDataset(EpisodeDataset(tmp_path / "store"), **kw)
    disk = ClipDataset(EpisodeDataset(tmp_path / "store"), frames_dir=tmp_path / "frames", **kw)
    assert isinstance(disk.frames, DiskFrames)
    model = make_model(cache_dtype=cache_dtype, num_modules=3).set_stage("module3")
    mem, ondisk = model.stage_dataset(ram, "module3"), model.stage_dataset(disk, "module3")
    assert all(isinstance(v, DiskFeatures) for v in ondisk.features.values())
    assert all(isinstance(v, torch.Tensor) for v in mem.features.values())
    assert ondisk.nbytes() == mem.nbytes() > 0
    idx = np.array([4, 0, 7, 7, 2])
    a, b = mem.get_batch(idx, augment=False), ondisk.get_batch(idx, augment=False)
    for key in ("frames", "actions", "h1", "h2"):
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    files = sorted((tmp_path / "frames" / "ghvae_features").glob("*.bin"))
    assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
    # the same frozen encoders reuse the files; changed encoders get new ones
    stamp = [f.stat().st_mtime_ns for f in files]
    model.stage_dataset(disk, "module3")
    assert [f.stat().st_mtime_ns for f in files] == stamp
    with torch.no_grad():
        next(model.stack[0].encoder.parameters()).add_(0.5)
    changed = model.stage_dataset(disk, "module3")
    assert len(list((tmp_path / "frames" / "ghvae_features").glob("*.bin"))) == 4
    assert not torch.equal(changed.get_batch(idx, augment=False)["h1"], b["h1"])
