"""Costs toward a goal image: pixel (sum), horizon weighting, embeddings, LPIPS."""

import pytest
import torch

from agents.costs import EmbeddingCost, LPIPSCost, PixelCost, horizon_weights, make_cost
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig, CopyLastConfig, CopyLastFrame


def test_horizon_weights():
    assert torch.equal(horizon_weights(4, "final"), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.equal(horizon_weights(3, "all"), torch.ones(3))
    lin = horizon_weights(4, "linear")
    assert torch.all(lin[1:] > lin[:-1]) and abs(float(lin.sum()) - 4) < 1e-5
    with pytest.raises(ValueError, match="weighting"):
        horizon_weights(3, "middle")
    with pytest.raises(ValueError, match=r"\[3\]"):
        horizon_weights(3, torch.ones(4))


def test_pixel_cost_is_a_sum_and_weights_the_horizon():
    goal = torch.zeros(3, 8, 8)
    pred = torch.zeros(2, 1, 3, 3, 8, 8)  # [N=2, S=1, T=3, 3, 8, 8]
    pred[0, 0, 0] = 0.5          # candidate 0: wrong only at step 0
    pred[1, 0, 2] = 0.5          # candidate 1: wrong only at the final step
    final = PixelCost(goal, weighting="final")(pred)
    assert final.shape == (2,)
    assert final[0] == 0 and abs(float(final[1]) - 0.25 * 3 * 64) < 1e-4  # sum over 192 values, not mean
    every = PixelCost(goal, weighting="all")(pred)
    assert torch.allclose(every, torch.tensor([48.0, 48.0]))
    assert PixelCost(goal).steps_needed(5) == [4] and PixelCost(goal, weighting="all").steps_needed(3) == [0, 1, 2]


def test_pixel_cost_averages_over_samples_and_checks_shapes():
    goal = torch.zeros(3, 4, 4)
    pred = torch.zeros(1, 2, 1, 3, 4, 4)
    pred[0, 1] = 1.0
    assert abs(float(PixelCost(goal)(pred)[0]) - 48 / 2) < 1e-5
    with pytest.raises(ValueError, match=r"\[N, S, T, 3, 4, 4\]"):
        PixelCost(goal)(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="goal_image"):
        PixelCost(torch.zeros(4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PixelCost(torch.full((3, 4, 4), 2.0))


def test_embedding_cost_matches_goal_and_needs_embeddings():
    torch.manual_seed(0)
    model = ConvPredictor(ConvPredictorConfig(**ConvPredictorConfig.PRESETS["tiny"])).eval()
    goal = torch.rand(3, 16, 16)
    cost = make_cost("embedding", goal, model=model)
    assert isinstance(cost, EmbeddingCost) and cost.space == "embeddings"
    with torch.no_grad():
        emb_goal = model.embed(goal[None])  # [1, D]
        other = model.embed(torch.rand(1, 3, 16, 16))
    pred = torch.stack([emb_goal, other])[:, None].expand(2, 1, 2, -1)  # [N=2, S=1, T=2, D]
    c = cost(pred)
    assert c.shape == (2,) and float(c[0]) < 1e-6 < float(c[1])
    # on predict_embeddings output, end to end
    ctx = torch.rand(3, 1, 3, 16, 16)
    out = model.predict_embeddings(ctx, torch.zeros(3, 2, 4), 1, seed=0)
    assert cost(out).shape == (3,)
    with pytest.raises(ValueError, match="supports_embeddings"):
        EmbeddingCost(goal, CopyLastFrame(CopyLastConfig(image_size=16)))
    with pytest.raises(ValueError, match="needs the world model"):
        make_cost("embedding", goal)


def test_lpips_cost_fails_clearly_without_weights(tmp_path):
    with pytest.raises(RuntimeError, match="LPIPS alex backbone weights"):
        LPIPSCost(torch.rand(3, 64, 64), weights=str(tmp_path / "missing.pth"))


def test_lpips_cost_ranks_candidates():
    try:
        cost = LPIPSCost(torch.zeros(3, 64, 64) + 0.5, weighting="final")
    except RuntimeError as e:  # no offline weights on this machine
        pytest.skip(str(e))
    goal = cost.goal
    pred = torch.stack([goal, goal.flip(-1) * 0 + torch.rand(3, 64, 64)])[:, None, None]  # [2, 1, 1, 3, 64, 64]
    pred = pred.expand(2, 1, 3, 3, 64, 64).clone()
    pred[0, 0, :2] = torch.rand(2, 3, 64, 64)  # non-final steps of candidate 0 are noise but carry no weight
    c = cost(pred)
    assert c.shape == (2,) and float(c[0]) < 1e-4 < float(c[1])
