"""Name -> class registry so a checkpoint's ``config.json`` rebuilds its own model.

Every `WorldModel` subclass registers itself with ``@register_model("name")``; the name is written as
``type`` in ``config.json``. Built-in models live in modules that are imported lazily on first lookup, so
``import foresight`` stays cheap and a robot computer without, say, LPIPS weights can still load a GHVAE.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY: dict[str, type] = {}

# type name -> module that defines it. Imported on demand by `get_model_class`.
_BUILTIN_MODULES: dict[str, str] = {
    "harp": "foresight.models.harp",
    "ghvae": "foresight.models.ghvae",
    "copy_last": "foresight.models.baselines",
    "conv": "foresight.models.baselines",
}


def register_model(name: str):
    """Class decorator: register a `WorldModel` subclass under ``name`` (its ``type`` in config.json)."""

    def wrap(cls: type) -> type:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"model type {name!r} is already registered to {existing.__module__}.{existing.__qualname__}")
        cls.type = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_model_class(name: str) -> Any:
    """Return the class registered as ``name``, importing built-in model modules on demand."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
        raise KeyError(f"unknown world-model type {name!r}; known types: {known}")
    return _REGISTRY[name]


def available_models() -> list[str]:
    """Names of all registered and built-in model types."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
