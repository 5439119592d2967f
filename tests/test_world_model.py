import json

import pytest
import torch

import foresight
from foresight import CheckpointError, WorldModel
from foresight.config import preset
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig, CopyLastConfig, CopyLastFrame


def test_predict_shape_and_batching(tiny_conv):
    context = torch.rand(7, 1, 3, 16, 16)
    actions = torch.rand(7, 5, 4) * 2 - 1
    out = tiny_conv.predict(context, actions, num_samples=2)
    assert out.shape == (7, 2, 5, 3, 16, 16)
    assert out.min() >= 0 and out.max() <= 1
    # Each candidate in a batch is predicted as if alone.
    single = tiny_conv.predict(context[3:4], actions[3:4])
    torch.testing.assert_close(out[3:4, :1], single, atol=1e-5, rtol=1e-5)


def test_predict_uses_last_context_frames(tiny_conv):
    history = torch.rand(2, 4, 3, 16, 16)
    actions = torch.zeros(2, 3, 4)
    torch.testing.assert_close(tiny_conv.predict(history, actions), tiny_conv.predict(history[:, -1:], actions))


def test_actions_change_the_prediction(tiny_conv):
    context = torch.rand(1, 1, 3, 16, 16)
    a = tiny_conv.predict(context, torch.ones(1, 3, 4))
    b = tiny_conv.predict(context, -torch.ones(1, 3, 4))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "context, actions, match",
    [
        (torch.rand(2, 1, 3, 32, 32), torch.zeros(2, 3, 4), r"expected 16x16 frames"),
        (torch.rand(2, 3, 16, 16), torch.zeros(2, 3, 4), r"expected shape \[B, T, 3, 16, 16\]"),
        (torch.rand(2, 1, 3, 16, 16) * 255, torch.zeros(2, 3, 4), r"expected values in \[0, 1\]"),
        ((torch.rand(2, 1, 3, 16, 16) * 255).to(torch.uint8), torch.zeros(2, 3, 4), r"float tensor"),
        (torch.rand(2, 1, 3, 16, 16), torch.zeros(2, 3, 7), r"expected shape \[2, T, 4\]"),
        (torch.rand(2, 1, 3, 16, 16), torch.zeros(3, 3, 4), r"expected shape \[2, T, 4\]|batch 2"),
        (torch.rand(2, 1, 3, 16, 16), None, r"action-conditioned"),
        (torch.rand(2, 0, 3, 16, 16), torch.zeros(2, 3, 4), r"at least 1 frames"),
    ],
)
def test_bad_input_names_expected_and_received(tiny_conv, context, actions, match):
    with pytest.raises(ValueError, match=match):
        tiny_conv.predict(context, actions)


def test_action_free_model_needs_horizon():
    model = CopyLastFrame(CopyLastConfig(image_size=16, action_dim=0))
    with pytest.raises(ValueError, match="horizon"):
        model.predict(torch.rand(1, 1, 3, 16, 16))
    out = model.predict(torch.rand(1, 1, 3, 16, 16), horizon=4)
    assert out.shape == (1, 1, 4, 3, 16, 16)


def test_save_load_round_trip_is_bit_identical(tiny_conv, tmp_path):
    tiny_conv.stats = {"action_mean": [0.0, 0.1, 0.2, 0.3]}
    tiny_conv.save_pretrained(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["type"] == "conv" and meta["config"]["image_size"] == 16
    loaded = foresight.load(tmp_path / "model")
    assert type(loaded) is ConvPredictor and loaded.config == tiny_conv.config
    assert loaded.stats == tiny_conv.stats
    for (name, a), (_, b) in zip(tiny_conv.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    context, actions = torch.rand(3, 1, 3, 16, 16), torch.rand(3, 3, 4)
    assert torch.equal(tiny_conv.predict(context, actions), loaded.predict(context, actions))
    # The class method on a subclass checks the type; on the base class it dispatches.
    assert type(ConvPredictor.from_pretrained(tmp_path / "model")) is ConvPredictor
    with pytest.raises(CheckpointError, match="not a CopyLastFrame"):
        CopyLastFrame.from_pretrained(tmp_path / "model")


def test_missing_and_corrupt_checkpoints_give_clear_errors(tiny_conv, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        foresight.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="expected config.json"):
        foresight.load(tmp_path / "empty")
    d = tiny_conv.save_pretrained(tmp_path / "m")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt weights file .*model.safetensors"):
        foresight.load(d)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing weights file"):
        foresight.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt model config"):
        foresight.load(d)


def test_weights_of_another_architecture_are_refused(tmp_path):
    small = ConvPredictor(preset(ConvPredictorConfig, "tiny"))
    d = small.save_pretrained(tmp_path / "m")
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["latent_channels"] = 32
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match the model"):
        foresight.load(d)


def test_unknown_type_lists_known_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "nope", "config": {}}))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown world-model type 'nope'; known types"):
        foresight.load(tmp_path)


def test_seed_makes_prediction_deterministic(tiny_conv):
    context, actions = torch.rand(2, 1, 3, 16, 16), torch.rand(2, 3, 4)
    assert torch.equal(tiny_conv.predict(context, actions, seed=3), tiny_conv.predict(context, actions, seed=3))


def test_stages_freeze_parameters(tiny_conv):
    assert tiny_conv.stages == ("all",)
    tiny_conv.set_stage("all")
    assert all(p.requires_grad for p in tiny_conv.parameters())
    with pytest.raises(ValueError, match="unknown stage"):
        tiny_conv.set_stage("tokenizer")


def test_features_are_causal(tiny_conv):
    frames = torch.rand(2, 5, 3, 16, 16)
    feats = tiny_conv.features(frames)
    assert feats.shape == (2, 5, tiny_conv.feature_dim)
    changed = frames.clone()
    changed[:, 3:] = torch.rand_like(changed[:, 3:])
    torch.testing.assert_close(tiny_conv.features(changed)[:, :3], feats[:, :3])


def test_world_model_is_abstract():
    with pytest.raises(TypeError):
        WorldModel(object())


@pytest.mark.parametrize("name", ["conv", "ghvae", "harp"])
def test_prediction_in_channels_last_equals_the_nchw_path(name):
    import copy

    from foresight.registry import get_model_class

    torch.manual_seed(0)
    cls = get_model_class(name)
    nchw = cls(preset(cls.config_class, "tiny")).eval()
    nhwc = copy.deepcopy(nchw)
    nchw._channels_last = True  # pretend it was converted: it predicts with its NCHW weights
    params = [id(p) for p in nhwc.parameters()]
    size, c, a = nchw.image_size, nchw.context_frames, nchw.action_dim
    ctx, actions = torch.rand(3, c, 3, size, size), torch.rand(3, 4, a) * 2 - 1
    ref = nchw.predict(ctx, actions, seed=1)
    out = nhwc.predict(ctx, actions, seed=1)  # converts its convolution weights on this first call
    convs = [m.weight for m in nhwc.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # really another layout (not 1x1 everywhere)
    assert [id(p) for p in nhwc.parameters()] == params  # the same parameter objects (optimisers keep them)
    assert torch.allclose(out, ref, atol=1e-5)
    assert nhwc.state_dict().keys() == nchw.state_dict().keys()
    assert all(torch.equal(x, y) for x, y in zip(nhwc.state_dict().values(), nchw.state_dict().values()))
