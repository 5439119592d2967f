"""foresight: robot control by visual foresight.

An action-conditioned video predictor behind one `WorldModel` interface (HARP, GHVAE and baselines),
planners that imagine the future of candidate action sequences and pick those that reach a goal image,
and behaviour-cloning heads on top of the predictor.

    from foresight import WorldModel, load
"""

from foresight.checkpoint import CheckpointError
from foresight.config import ConfigError, build_config, preset
from foresight.registry import available_models, get_model_class, register_model
from foresight.world_model import WorldModel, check_actions, check_frames, load

__version__ = "0.1.0"

__all__ = [
    "WorldModel",
    "load",
    "register_model",
    "get_model_class",
    "available_models",
    "check_frames",
    "check_actions",
    "build_config",
    "preset",
    "CheckpointError",
    "ConfigError",
    "__version__",
]
