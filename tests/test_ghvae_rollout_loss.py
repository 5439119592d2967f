"""GHVAE's open-loop rollout loss trains the path planning scores (`predict_embeddings`).

A tiny GHVAE on `SyntheticClips` (a square moved by the actions), trained the same way with and without the
rollout term: with it, the deepest-level rollout ends nearer the encoding of the true final frame than without
it (each relative to its own "the features do not change" error).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from foresight.config import preset
from foresight.models.ghvae import GHVAE, GHVAEConfig
from foresight.testing import SyntheticClips
from foresight.train import TrainConfig, Trainer

torch.set_num_threads(1)


def clips(n: int, seed: int, config: GHVAEConfig) -> SyntheticClips:
    return SyntheticClips(n, context_frames=config.context_frames, future_frames=config.future_frames,
                          image_size=config.image_size, action_dim=config.action_dim, square=4, seed=seed)


def train_tiny(tmp_path, rollout_weight: float, **extra) -> GHVAE:
    config = dataclasses.replace(preset(GHVAEConfig, "tiny"), num_modules=1, kl_weight=1.0,
                                 rollout_weight=rollout_weight, **extra)
    torch.manual_seed(0)
    model = GHVAE(config)
    train = dataclasses.replace(preset(TrainConfig, "tiny"), steps=150, batch_size=16, lr=3e-3, warmup_steps=10,
                                progress=False, log_every=50)
    Trainer(model, clips(512, 0, config), config=train, run_dir=tmp_path / f"r{rollout_weight}{sorted(extra.items())}",
            stage="module1").fit()
    return model.eval()


def final_step_error(model: GHVAE, data: SyntheticClips) -> tuple[float, float]:
    """Relative squared error of the rollout's last deepest state, and of the last context state, against the
    encoding of the true last frame, over ``data``."""
    c = model.context_frames
    batch = [data[i] for i in range(len(data))]
    frames = torch.stack([torch.as_tensor(b["frames"]) for b in batch]).float()
    frames = frames / 255.0 if frames.max() > 1.5 else frames
    actions = torch.stack([torch.as_tensor(b["actions"]) for b in batch]).float()[:, c - 1:]
    pred = model.predict_embeddings(frames[:, :c], actions, num_samples=1, seed=0)[:, 0, -1]  # [B, D]
    with torch.no_grad():
        true = model.embed(frames[:, -1])
        start = model.embed(frames[:, c - 1])
    scale = true.var()
    return float(((pred - true) ** 2).mean() / scale), float(((start - true) ** 2).mean() / scale)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_loss")
    # h^d as the embedding, no readout: the rollout term alone makes the difference
    trained = {w: train_tiny(root, w, embedding="deepest", readout_weight=0.0) for w in (0.0, 1.0)}
    trained["readout"] = train_tiny(root, 1.0)  # the preset: readout image as the embedding
    return trained


def test_rollout_loss_makes_the_latent_rollout_land_on_the_true_future(trained):
    """Errors relative to each model's own "nothing changes" error (the two models' embeddings differ)."""
    held_out = clips(64, 123, trained[1.0].config)
    with_loss, copy_with = final_step_error(trained[1.0], held_out)
    without_loss, copy_without = final_step_error(trained[0.0], held_out)
    assert with_loss / copy_with < 0.7, (with_loss, copy_with)
    assert with_loss / copy_with < 0.9 * without_loss / copy_without, (with_loss, copy_with, without_loss, copy_without)


def test_rollout_term_is_logged_and_trains_the_prior():
    config = dataclasses.replace(preset(GHVAEConfig, "tiny"), num_modules=1)
    model = GHVAE(config)
    batch = clips(4, 0, config)
    frames = torch.stack([torch.as_tensor(batch[i]["frames"]) for i in range(4)])
    actions = torch.stack([torch.as_tensor(batch[i]["actions"]) for i in range(4)]).float()
    loss, metrics = model.loss({"frames": frames, "actions": actions})
    assert {"rollout", "rollout_final", "rollout_final_copy"} <= metrics.keys()
    loss.backward()
    prior_grad = sum(float(p.grad.abs().sum()) for p in model.stack[0].prior.parameters() if p.grad is not None)
    assert prior_grad > 0
    assert {"readout", "readout_rollout", "readout_copy"} <= metrics.keys()
    off = GHVAE(dataclasses.replace(config, rollout_weight=0.0, readout_weight=0.0))
    assert "rollout" not in off.loss({"frames": frames, "actions": actions})[1]
    with pytest.raises(ValueError, match="rollout_weight"):
        GHVAEConfig(rollout_weight=-1.0)
    with pytest.raises(ValueError, match="embedding"):
        GHVAEConfig(embedding="pixels")


def test_readout_embedding_of_the_rollout_shows_the_true_future(trained):
    """With ``embedding="readout"`` the model-space cost compares images: `embed` pools the real frame to
    3 x R x R and `predict_embeddings` reads the same small image off the rolled-out h^d. On held-out clips the
    imagined last frame is nearer the real one than the last context frame is ("nothing moves")."""
    model = trained["readout"]
    assert model.embedding_dim == 3 * model.config.readout_size**2
    frames = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model.embed(frames), torch.nn.functional.avg_pool2d(frames, 2).flatten(1))
    error, copy = final_step_error(model, clips(64, 123, model.config))
    assert error < 0.6 * copy, (error, copy)
