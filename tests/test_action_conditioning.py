"""Action conditioning that an action-blind model fails: a tiny GHVAE trained with the library's Trainer on
`SyntheticClips` (a square moved by ``actions[:, :2]``) must move the square the way held actions say, in pixels
and in its deepest-level latent rollout; the seeds' prior-only conditioning (``action_in_decoder=False``)
trained the same way does not move it at all.

The clips are trained at ``kl_weight=1``: that is the regime measured on Meta-World, where the KL of z is near
zero (here about 0.01 nats per frame), so z carries nothing and only a deterministic action path can explain
the motion. (At the default per-pixel weight, z is free on these easy clips and encodes the motion itself.)
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

SIZE, SQUARE, BACKGROUND = 16, 4, 0.1
STEP = SIZE / 8      # pixels a unit action moves the square in SyntheticClips
ACTION = 0.8         # held for the 3 predicted steps: 4.8 pixels each way from the centre
COLOUR = torch.tensor([0.9, 0.8, 0.3])


def square_frames(positions: list[tuple[float, float]]) -> torch.Tensor:
    """Frames ``[T, 3, SIZE, SIZE]`` drawn as `SyntheticClips` draws them, square top-left at (y, x)."""
    frames = torch.full((len(positions), 3, SIZE, SIZE), BACKGROUND)
    for t, (y, x) in enumerate(positions):
        y, x = int(round(y)), int(round(x))
        frames[t, :, y:y + SQUARE, x:x + SQUARE] = COLOUR[:, None, None]
    return frames


def centroid(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brightness-weighted centre (y, x) of what stands above the background, per frame ``[..., 3, H, W]``."""
    w = (frames.mean(-3) - BACKGROUND).clamp_min(0)  # [..., H, W]
    ys = torch.arange(SIZE, dtype=w.dtype)[:, None]
    xs = torch.arange(SIZE, dtype=w.dtype)[None]
    mass = w.sum((-2, -1)).clamp_min(1e-6)
    return (w * ys).sum((-2, -1)) / mass, (w * xs).sum((-2, -1)) / mass


def train_tiny(tmp_path, *, action_in_decoder: bool, steps: int = 200) -> GHVAE:
    # The ELBO alone (no rollout or readout terms, which train the prior open loop and so give even the
    # prior-only model an action path; tests/test_ghvae_rollout_loss.py covers them) and h^d as the embedding.
    config = dataclasses.replace(preset(GHVAEConfig, "tiny"), action_in_decoder=action_in_decoder, kl_weight=1.0,
                                 rollout_weight=0.0, readout_weight=0.0, embedding="deepest")
    torch.manual_seed(0)
    model = GHVAE(config)
    clips = SyntheticClips(512, context_frames=config.context_frames, future_frames=config.future_frames,
                           image_size=SIZE, action_dim=config.action_dim, square=SQUARE, seed=0)
    train = dataclasses.replace(preset(TrainConfig, "tiny"), steps=steps, batch_size=16, lr=3e-3, warmup_steps=10,
                                progress=False, log_every=50)
    Trainer(model, clips, config=train, run_dir=tmp_path / f"aid{int(action_in_decoder)}", stage="module1").fit()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("action_conditioning")
    return {flag: train_tiny(root, action_in_decoder=flag) for flag in (True, False)}


def held_actions(axis: int) -> torch.Tensor:
    """Two plans, +ACTION and -ACTION on ``axis`` (0 = y, 1 = x) held for 3 steps: ``[2, 3, 4]``."""
    actions = torch.zeros(2, 3, 4)
    actions[0, :, axis], actions[1, :, axis] = ACTION, -ACTION
    return actions


@pytest.mark.parametrize("axis", [0, 1], ids=["y", "x"])
def test_prediction_moves_the_way_the_action_says(trained, axis):
    centre = (SIZE - SQUARE) / 2
    context = square_frames([(centre, centre)] * 2).expand(2, -1, -1, -1, -1)  # [2, 2, 3, H, W], at rest
    true_gap = 2 * ACTION * STEP * 3  # +axis minus -axis after 3 steps: 9.6 pixels
    gaps = {}
    for flag, model in trained.items():
        video = model.predict(context, held_actions(axis), num_samples=4, seed=0)  # [2, 4, 3, 3, H, W]
        moved = centroid(video)[axis].mean(1)  # [2, T]: mean over samples
        gaps[flag] = moved[0] - moved[1]       # [T]
    # With the action in the decoder: the right direction at every step, and at least half the true distance.
    assert (gaps[True] > 0).all(), gaps[True]
    assert gaps[True][-1] > 0.5 * true_gap, (gaps[True], true_gap)
    # The seeds' prior-only conditioning, trained the same way, is action-blind here: the check must fail for it.
    assert abs(gaps[False][-1]) < 0.1 * true_gap, gaps[False]


@pytest.mark.parametrize("axis", [0, 1], ids=["y", "x"])
def test_latent_rollout_ranks_the_true_goal_first(trained, axis):
    """A model-space cost (distance of predict_embeddings' last step to embed(goal)) picks the action that
    really reaches the goal; the action-blind model cannot tell them apart."""
    model = trained[True]
    centre = (SIZE - SQUARE) / 2
    context = square_frames([(centre, centre)] * 2)[None].expand(2, -1, -1, -1, -1)
    actions = held_actions(axis)
    shift = ACTION * STEP * 3
    goals = torch.stack([square_frames([(centre + s, centre) if axis == 0 else (centre, centre + s)])[0]
                         for s in (shift, -shift)])  # [2, 3, H, W]: where +axis and -axis really end
    for flag, model in trained.items():
        pred = model.predict_embeddings(context, actions, num_samples=4, seed=0)[:, :, -1]  # [2, 4, D]
        cost = torch.cdist(pred.mean(1), model.embed(goals))  # [plans, goals]
        if flag:
            assert cost[0, 0] < cost[1, 0] and cost[1, 1] < cost[0, 1], cost
        else:
            assert torch.allclose(cost[0], cost[1], rtol=0.05), cost
