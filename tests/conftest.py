"""Shared fixtures: tiny models and tiny data, made in memory."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch

from foresight.config import preset
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig
from foresight.testing import SyntheticClips


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run on 2-core machines; oversubscribed BLAS threads make everything slower.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_conv():
    torch.manual_seed(0)
    return ConvPredictor(preset(ConvPredictorConfig, "tiny"))


@pytest.fixture
def tiny_clips():
    return SyntheticClips(32, context_frames=1, future_frames=3, image_size=16, action_dim=4)
