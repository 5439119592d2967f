"""Behaviour-cloning policies: training, frame history, checkpoints, freezing, input checks (tiny, CPU)."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from foresight.checkpoint import CheckpointError
from foresight.config import merge, preset
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig
from foresight.testing import SyntheticClips
from foresight.train import TrainConfig, Trainer

from agents.policies import (BCConfig, BCPolicy, load_policy, make_backbone, make_bc_policy, reinit_stage)

SIZE = 16


def _batch(n=8, future=3, seed=0):
    ds = SyntheticClips(n, context_frames=1, future_frames=future, image_size=SIZE, seed=seed)
    return default_collate([ds[i] for i in range(n)])


def _images(n, seed=0):
    g = np.random.default_rng(seed)
    return [g.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


class SpyBackbone(nn.Module):
    """Records every window it is given; feature = mean colour of each frame (a linear map of it)."""

    feature_dim = 3

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.seen = []

    def features(self, frames, actions=None):
        self.seen.append(frames.detach().clone())
        return frames.mean(dim=(-2, -1)) * self.scale  # [B, T, 3]


def _spy_policy(history):
    return BCPolicy(SpyBackbone(), config=BCConfig(image_size=SIZE, history=history, hidden_dim=8))


def _train(policy, steps=50, lr=3e-3, seed=0):
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=lr)
    batch = _batch(16, seed=seed)
    history = []
    for _ in range(steps):
        loss, metrics = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics)
    return history


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", ["harp", "cnn_transformer"])
def test_policy_and_inverse_heads_learn(tiny_conv, method):
    kw = {"backbone_model": tiny_conv} if method == "harp" else {}
    policy = make_bc_policy(method, preset="tiny", image_size=SIZE, seed=0, **kw)
    hist = _train(policy, steps=50)
    first, last = hist[0], hist[-1]
    assert set(first) == {"bc_mse", "inverse_mse"}
    # actions are uniform in [-1, 1] (MSE ~0.33 at a constant guess); the square's motion reveals a_t[:2]
    assert last["bc_mse"] < 0.8 * first["bc_mse"], (first, last)
    assert last["inverse_mse"] < 0.7 * first["inverse_mse"], (first, last)


def test_loss_is_bc_plus_weighted_inverse(tiny_conv):
    batch = _batch()
    for weight in (0.0, 2.5):
        policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE, inverse_weight=weight)
        loss, m = policy(batch)
        assert float(loss.detach()) == pytest.approx(m["bc_mse"] + weight * m["inverse_mse"], rel=1e-5)


def test_heads_read_the_documented_features(tiny_conv):
    policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE)
    batch = _batch(4)
    feats = policy.features(batch["frames"])  # [B, T, D]
    pred = policy.predict_actions(batch["frames"])  # [B, T, A]
    torch.testing.assert_close(pred, policy.policy_head(feats))
    bc = torch.nn.functional.mse_loss(pred[:, :-1], batch["actions"])  # feature of frame t -> a_t
    pairs = torch.cat([feats[:, :-1], feats[:, 1:]], -1)
    inv = torch.nn.functional.mse_loss(policy.inverse_head(pairs), batch["actions"])
    _, m = policy(batch)
    assert m["bc_mse"] == pytest.approx(float(bc.detach()), rel=1e-5)
    assert m["inverse_mse"] == pytest.approx(float(inv.detach()), rel=1e-5)
    # acting = policy head on the newest frame of the window
    window = batch["frames"][:, :3]
    torch.testing.assert_close(policy.act(window), policy.predict_actions(window)[:, -1])


@pytest.mark.parametrize("kind", ["cnn_lstm", "cnn_transformer"])
def test_cnn_backbones_are_causal(kind):
    torch.manual_seed(0)
    backbone = make_backbone(kind, "tiny")
    frames = torch.rand(2, 5, 3, SIZE, SIZE)
    changed = frames.clone()
    changed[:, 3:] = torch.rand(2, 2, 3, SIZE, SIZE)
    a, b = backbone.features(frames), backbone.features(changed)
    assert a.shape == (2, 5, backbone.feature_dim)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4


def test_paper_presets_match_the_paper_shapes():
    from agents.policies import CNNLSTMConfig, CNNTransformerConfig

    lstm, tr = preset(CNNLSTMConfig, "paper"), preset(CNNTransformerConfig, "paper")
    assert (lstm.block, lstm.blocks, lstm.lstm_layers) == ("bottleneck", (3, 4, 6, 3), 4)  # ResNet-50 + 4-layer LSTM
    assert (tr.block, tr.blocks, tr.layers) == ("bottleneck", (3, 4, 6, 3), 12)  # ResNet-50 + 12 layers
    from agents.policies import ResNetEncoder

    trunk = sum(p.numel() for n, p in ResNetEncoder(lstm).named_parameters() if not n.startswith("proj"))
    assert 23.0e6 < trunk < 23.6e6  # ResNet-50 without its fc layer: 23.5M parameters


# ---------------------------------------------------------------------------------------------- acting
def test_select_action_shapes_and_clipping(tiny_conv):
    policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE)
    img = _images(1)[0]
    a = policy.select_action({"image": img, "state": np.zeros(39)})
    assert a.shape == (4,) and a.dtype == np.float32
    b = policy.select_action(img)  # the bare image works too
    assert b.shape == (4,)
    with torch.no_grad():
        policy.policy_head[-1].bias.fill_(5.0)
    policy.reset()
    assert np.all(policy.select_action(img) == 1.0)


def test_select_action_acts_in_eval_mode_and_restores_the_mode(tiny_conv):
    policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE)
    seen = []
    policy.policy_head.register_forward_hook(lambda m, i, o: seen.append(m.training))
    img = _images(1)[0]
    policy.train()
    policy.select_action(img)
    assert seen[-1] is False and policy.training and policy.policy_head.training  # acted in eval, restored
    policy.eval()
    policy.policy_head.train()  # one submodule left in training mode: still acts in eval mode
    policy.reset()
    policy.select_action(img)
    assert seen[-1] is False and not policy.policy_head.training
    calls = []
    original = type(policy).train
    type(policy).train = lambda self, mode=True: calls.append(mode) or original(self, mode)
    try:
        policy.select_action(img)  # all in eval mode already: no mode switch
    finally:
        type(policy).train = original
    assert calls == [] and seen[-1] is False


def test_history_padding_sliding_and_reset():
    policy = _spy_policy(history=3)
    spy = policy.backbone
    imgs = _images(5)
    f = [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in imgs]
    policy.select_action({"image": imgs[0]})
    w = spy.seen[-1]
    assert w.shape == (1, 3, 3, SIZE, SIZE) and w.dtype == torch.float32
    for t in range(3):  # episode start: padded by repeating the first frame
        torch.testing.assert_close(w[0, t], f[0])
    policy.select_action({"image": imgs[1]})
    torch.testing.assert_close(spy.seen[-1][0], torch.stack([f[0], f[0], f[1]]))
    policy.select_action({"image": imgs[2]})
    policy.select_action({"image": imgs[3]})
    torch.testing.assert_close(spy.seen[-1][0], torch.stack([f[1], f[2], f[3]]))  # oldest frames dropped
    policy.reset()
    policy.select_action({"image": imgs[4]})
    torch.testing.assert_close(spy.seen[-1][0], torch.stack([f[4]] * 3))  # no frames of the last episode


def test_history_one_sees_only_the_current_frame():
    torch.manual_seed(0)
    imgs = _images(3)
    for history, same in ((1, True), (4, False)):
        torch.manual_seed(0)
        backbone = make_backbone("cnn_lstm", "tiny")
        policy = BCPolicy(backbone, config=BCConfig(image_size=SIZE, history=history, hidden_dim=16)).eval()
        policy.select_action(imgs[0])
        after_a = policy.select_action(imgs[2])
        policy.reset()
        policy.select_action(imgs[1])
        after_b = policy.select_action(imgs[2])
        assert np.array_equal(after_a, after_b) == same, history


def test_batched_envs_and_partial_reset():
    policy = _spy_policy(history=2)
    spy = policy.backbone
    imgs = np.stack(_images(6))  # two steps of 3 envs
    out = policy.select_action({"image": imgs[:3]})
    assert out.shape == (3, 4)
    policy.reset(env_ids=[1])
    policy.select_action({"image": imgs[3:]})
    w = spy.seen[-1]  # [3, 2, 3, H, W]
    f = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(w[0], torch.stack([f[0], f[3]]))
    torch.testing.assert_close(w[1], torch.stack([f[4], f[4]]))  # env 1 restarted
    torch.testing.assert_close(w[2], torch.stack([f[2], f[5]]))
    with pytest.raises(ValueError, match="call reset"):
        policy.select_action({"image": imgs[0]})  # 1 env while 3 are running


def test_wrong_observations_give_clear_errors(tiny_conv):
    policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE)
    with pytest.raises(ValueError, match=r"expected uint8 \[16, 16, 3\].*got shape \[64, 64, 3\]"):
        policy.select_action({"image": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"got shape \[3, 16, 16\]"):
        policy.select_action(np.zeros((3, SIZE, SIZE), np.uint8))  # channels first
    with pytest.raises(ValueError, match="'image' entry"):
        policy.select_action({"state": np.zeros(39)})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        policy.select_action(np.full((SIZE, SIZE, 3), 200.0, np.float32))
    batch = _batch(2)
    with pytest.raises(ValueError, match=r"batch\['actions'\]: expected shape \[2, 3, 4\]"):
        policy({"frames": batch["frames"], "actions": batch["actions"][:, :2]})


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("method", ["harp", "vq_transformer", "cnn_lstm", "cnn_transformer"])
def test_save_load_round_trip_gives_identical_actions(tmp_path, tiny_conv, method):
    kw = {"backbone_model": tiny_conv} if method in ("harp", "vq_transformer") else {}
    policy = make_bc_policy(method, preset="tiny", image_size=SIZE, seed=1, **kw)
    _train(policy, steps=2)
    policy.save_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["kind"] == "policy" and meta["type"] == "bc" and meta["config"]["method"] == method
    loaded = load_policy(tmp_path / "p")
    assert type(loaded.backbone) is type(policy.backbone) and loaded.history == policy.history
    policy.eval()
    for img in _images(6):
        np.testing.assert_array_equal(policy.select_action(img), loaded.select_action(img))


def test_load_policy_errors_name_the_file(tmp_path, tiny_conv):
    policy = make_bc_policy("cnn_lstm", preset="tiny", image_size=SIZE)
    d = policy.save_pretrained(tmp_path / "p")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_policy(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_policy(d)
    tiny_conv.save_pretrained(tmp_path / "wm")
    with pytest.raises(CheckpointError, match="not a policy"):
        load_policy(tmp_path / "wm")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_policy(d)


def test_trainer_checkpoints_a_policy_that_loads(tmp_path, tiny_conv):
    policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE)
    clips = SyntheticClips(16, context_frames=1, future_frames=3, image_size=SIZE)
    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_every=0, save_every=0, progress=False)
    Trainer(policy, clips, config=cfg, run_dir=tmp_path / "run", stage="policy").fit()
    loaded = load_policy(tmp_path / "run")
    policy.eval()
    img = _images(1)[0]
    np.testing.assert_array_equal(policy.select_action(img), loaded.select_action(img))


# ---------------------------------------------------------------------------------------------- freezing
def test_frozen_backbone_parameters_stay_frozen_through_trainer(tmp_path, tiny_conv):
    frozen = tiny_conv.encoder[0].weight
    frozen.requires_grad_(False)  # e.g. a frozen tokenizer
    policy = make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE, copy_backbone=False)
    assert policy.frozen_parameter_names == ["backbone.encoder.0.weight"]
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    clips = SyntheticClips(16, context_frames=1, future_frames=3, image_size=SIZE)
    cfg = TrainConfig(steps=3, batch_size=4, warmup_steps=1, eval_every=0, save_every=0, progress=False)
    Trainer(policy, clips, config=cfg, run_dir=tmp_path / "run", stage="policy").fit()  # calls set_stage
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, before["backbone.encoder.0.weight"], rtol=0, atol=0)
    assert (policy.backbone.encoder[3].weight - before["backbone.encoder.3.weight"]).abs().max() > 0  # fine-tuned
    assert load_policy(tmp_path / "run").frozen_parameter_names == ["backbone.encoder.0.weight"]


def test_freeze_backbone_keeps_weights_and_norm_statistics():
    torch.manual_seed(0)
    backbone = make_backbone("cnn_lstm", "tiny", norm="batch")
    policy = BCPolicy(backbone, config=BCConfig(image_size=SIZE, history=4, hidden_dim=16, freeze_backbone=True))
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    policy.train()
    assert not backbone.training and policy.policy_head.training
    _train(policy, steps=3)
    for k, v in backbone.state_dict().items():  # weights AND BatchNorm running statistics
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.requires_grad for p in policy.policy_head.parameters())


def test_harp_fine_tunes_transformer_with_tokenizer_frozen():
    from foresight.models.harp import Harp, HarpConfig

    torch.manual_seed(0)
    harp = Harp(preset(HarpConfig, "tiny"))
    policy = make_bc_policy("harp", backbone_model=harp, preset="tiny", image_size=SIZE)
    tok = {n: v.clone() for n, v in policy.backbone.tokenizer.state_dict().items()}
    tr = {n: p.detach().clone() for n, p in policy.backbone.transformer.named_parameters()}
    _train(policy, steps=2)
    assert not any(p.requires_grad for p in policy.backbone.tokenizer.parameters())
    for n, v in policy.backbone.tokenizer.state_dict().items():  # incl. the codebook buffers
        torch.testing.assert_close(v, tok[n], rtol=0, atol=0)
    assert any((p - tr[n]).abs().max() > 0 for n, p in policy.backbone.transformer.named_parameters())


def test_reinit_stage_resets_only_that_stage(tiny_conv):
    from foresight.models.harp import Harp, HarpConfig

    torch.manual_seed(0)
    harp = Harp(preset(HarpConfig, "tiny"))
    with torch.no_grad():
        for p in harp.parameters():
            p.add_(1.0)  # stands in for pretraining
    tok = {n: v.clone() for n, v in harp.tokenizer.state_dict().items()}
    vq = make_bc_policy("vq_transformer", backbone_model=harp, preset="tiny", image_size=SIZE, seed=5)
    for n, v in vq.backbone.tokenizer.state_dict().items():
        torch.testing.assert_close(v, tok[n], rtol=0, atol=0)
    fresh = dict(vq.backbone.transformer.named_parameters())
    old = dict(harp.transformer.named_parameters())  # copy_backbone: the passed model is untouched
    assert all((fresh[n] - old[n]).abs().max() > 0 for n in fresh)
    again = reinit_stage(Harp(preset(HarpConfig, "tiny")), "transformer", seed=5)
    for n, p in again.transformer.named_parameters():
        torch.testing.assert_close(p, fresh[n])  # seeded: reproducible


def test_make_bc_policy_argument_checks(tiny_conv):
    with pytest.raises(ValueError, match="backbone_model"):
        make_bc_policy("harp", preset="tiny", image_size=SIZE)
    with pytest.raises(ValueError, match="exceeds"):
        make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=SIZE, history=9)
    with pytest.raises(ValueError, match="image_size"):
        make_bc_policy("harp", backbone_model=tiny_conv, preset="tiny", image_size=32)
    with pytest.raises(ValueError, match="unknown method"):
        make_bc_policy("diffusion", preset="tiny")


# ---------------------------------------------------------------------------------------------- frame cache
def _cache_policies():
    from foresight.models.ghvae import GHVAE, GHVAEConfig
    from foresight.models.harp import Harp, HarpConfig

    torch.manual_seed(0)
    harp = Harp(preset(HarpConfig, "tiny"))
    yield "harp", make_bc_policy("harp", backbone_model=harp, preset="tiny", image_size=SIZE, history=4)
    for kind in ("cnn_lstm", "cnn_transformer"):
        yield kind, make_bc_policy(kind, preset="tiny", image_size=SIZE, history=4)
    ghvae = GHVAE(merge(preset(GHVAEConfig, "tiny"), {"image_size": SIZE}))
    yield "ghvae", BCPolicy(ghvae, config=BCConfig(image_size=SIZE, history=4, hidden_dim=16))


def test_frame_cache_gives_the_uncached_actions_and_encodes_each_frame_once():
    """Cached and uncached select_action agree step by step over a sliding window, with a partial reset of one
    of three batched envs; with the cache each select_action encodes only the newest frame."""
    imgs = np.stack(_images(3 * 7, seed=3)).reshape(7, 3, SIZE, SIZE, 3)
    for name, policy in _cache_policies():
        policy.eval()
        calls = []
        encode = policy.encode_frames
        policy.encode_frames = lambda frames, _e=encode: calls.append(frames.shape[1]) or _e(frames)
        assert encode(torch.rand(2, 4, 3, SIZE, SIZE)) is not None, name  # every method here has a cache
        actions = {}
        for cached in (True, False):
            policy.use_frame_cache = cached
            policy.reset()
            out = []
            for step in range(7):
                if step == 4:
                    policy.reset(env_ids=[1])
                out.append(policy.select_action({"image": imgs[step]}))
            actions[cached] = np.stack(out)
        np.testing.assert_allclose(actions[True], actions[False], rtol=0, atol=1e-5, err_msg=name)
        assert calls and set(calls) == {1}, (name, calls)  # only the newest frame, never the window
        if name == "ghvae":
            continue  # its feature of the newest frame reads that frame alone: past codes cannot matter
        # the cache really is used: corrupting it changes the action (no silent re-encoding)
        policy.use_frame_cache = True
        policy.reset()
        policy.select_action({"image": imgs[0]})
        clean = policy.select_action({"image": imgs[1]})
        policy.reset()
        policy.select_action({"image": imgs[0]})
        policy._codes = (policy._codes.float() * 0 + 1).to(policy._codes.dtype)
        assert not np.allclose(policy.select_action({"image": imgs[1]}), clean, atol=1e-6), name
