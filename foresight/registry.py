"""Name -> class registries so a checkpoint's ``config.json`` rebuilds its own class.

Every `WorldModel` subclass registers itself with ``@register_model("name")`` and every policy with
``agents.policies.register_policy("name")``; the name is written as ``type`` in ``config.json``. Built-in
classes live in modules that are imported lazily on first lookup, so ``import foresight`` stays cheap and a robot
computer without, say, LPIPS weights can still load a GHVAE.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    """``name -> class`` for one kind of saved object, with built-in names imported from their module on demand."""

    def __init__(self, kind: str, builtin: dict[str, str] | None = None):
        self.kind = kind
        self.classes: dict[str, type] = {}
        self.builtin: dict[str, str] = dict(builtin or {})  # type name -> module that defines it

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register ``cls`` under ``name`` and set ``cls.type = name``. Re-registering the same
        class (a module imported twice) is fine; another class under a taken name is refused."""

        def wrap(cls: type) -> type:
            existing = self.classes.get(name)
            if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} type {name!r} is already registered to "
                                 f"{existing.__module__}.{existing.__qualname__}")
            cls.type = name
            self.classes[name] = cls
            return cls

        return wrap

    def get(self, name: str) -> Any:
        """The class registered as ``name``, importing a built-in module on first lookup."""
        if name not in self.classes and name in self.builtin:
            importlib.import_module(self.builtin[name])
        if name not in self.classes:
            raise KeyError(f"unknown {self.kind} type {name!r}; known types: {self.names()}")
        return self.classes[name]

    def names(self) -> list[str]:
        return sorted(set(self.classes) | set(self.builtin))


MODELS = Registry("world-model", {
    "harp": "foresight.models.harp",
    "ghvae": "foresight.models.ghvae",
    "videogpt": "foresight.models.videogpt",
    "video_vqvae": "foresight.models.video_vqvae",
    "hier_vrnn": "foresight.models.hier_vrnn",
    "copy_last": "foresight.models.baselines",
    "conv": "foresight.models.baselines",
})


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: register a `WorldModel` subclass under ``name`` (its ``type`` in config.json)."""
    return MODELS.register(name)


def get_model_class(name: str) -> Any:
    """Return the class registered as ``name``, importing built-in model modules on demand."""
    return MODELS.get(name)


def available_models() -> list[str]:
    """Names of all registered and built-in model types."""
    return MODELS.names()
