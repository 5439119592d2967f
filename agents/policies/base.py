"""The `Policy` interface: closed-loop image policies with their own frame history, and their checkpoints.

A policy is used like a LeRobot policy::

    policy = load_policy("runs/mt50_bc/harp/checkpoints/last").to("cuda")
    policy.reset()                                   # at every episode start
    obs, info = env.reset()
    while not done:
        action = policy.select_action(obs)           # np.ndarray [A] in [-1, 1]
        obs, reward, terminated, truncated, info = env.step(action)

``select_action`` takes the env's observation dict ``{'image': uint8 [H, W, 3], 'state': float [S]}`` (or the
uint8 image array itself). The policy keeps a window of the last ``history`` frames; right after ``reset`` the
window is padded by repeating the first frame, so every call sees exactly ``history`` frames. A batch of
observations from N vectorised envs (``image`` uint8 ``[N, H, W, 3]``) gives ``[N, A]``; ``reset(env_ids)``
then restarts the history of some envs only.

Per-frame cache: a policy whose backbone computes something per frame, independently of the other frames (HARP's
tokenizer codes, the CNN baselines' ResNet features), returns it from ``encode_frames``; the window then holds
those codes beside the frames, each frame is encoded once when it arrives instead of ``history`` times while it
slides through the window, and ``act`` receives the cached codes. The result is the same as without the cache
(tested); ``use_frame_cache = False`` turns it off.

Checkpoints are directories with ``config.json`` (``{"kind": "policy", "type": ..., ...}``) and
``model.safetensors``, written atomically; `load_policy` rebuilds the right class from ``type``.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from foresight import checkpoint as ckpt
from foresight.registry import Registry

__all__ = ["Policy", "register_policy", "get_policy_class", "load_policy", "observation_frames"]

POLICIES = Registry("policy", {"bc": "agents.policies.bc"})


def register_policy(name: str):
    """Class decorator: register a `Policy` subclass under ``name`` (its ``type`` in config.json)."""
    return POLICIES.register(name)


def get_policy_class(name: str) -> type:
    return POLICIES.get(name)


def observation_frames(observation: Any, *, image_size: int) -> tuple[Tensor, bool]:
    """An observation -> (frames ``[N, 3, H, W]`` float32 in [0, 1] on the CPU, batched?).

    Accepts the env's dict (its ``'image'`` entry is used; ``'state'`` is ignored) or the image itself, as
    uint8 ``[H, W, 3]`` / ``[N, H, W, 3]`` (numpy or torch). Float images must already be in [0, 1].
    """
    image = observation.get("image") if isinstance(observation, dict) else observation
    expected = f"uint8 [{image_size}, {image_size}, 3] (or a batch [N, {image_size}, {image_size}, 3])"
    if image is None:
        raise ValueError(f"observation: expected a dict with an 'image' entry {expected}, got keys {sorted(observation)}")
    if isinstance(image, np.ndarray):
        if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
            raise ValueError(f"observation image: expected {expected}, got dtype {image.dtype}")
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise ValueError(f"observation image: expected {expected}, got {type(image).__name__}")
    if image.ndim not in (3, 4) or tuple(image.shape[-3:]) != (image_size, image_size, 3):
        raise ValueError(f"observation image: expected {expected}, got shape {list(image.shape)} dtype {image.dtype}")
    batched = image.ndim == 4
    if image.dtype == torch.uint8:
        frames = image.float() / 255
    elif image.is_floating_point():
        frames = image.float()
        if frames.numel() and (float(frames.min()) < 0 or float(frames.max()) > 1):
            raise ValueError(f"observation image: float images must be in [0, 1], got min {float(frames.min()):.3g} "
                             f"max {float(frames.max()):.3g} (pass the env's uint8 image)")
    else:
        raise ValueError(f"observation image: expected {expected}, got dtype {image.dtype}")
    frames = frames.reshape(-1, image_size, image_size, 3).permute(0, 3, 1, 2)  # [N, 3, H, W]
    return frames, batched


class Policy(nn.Module, abc.ABC):
    """An image policy with its own frame history.

    Subclasses set ``config`` (a dataclass with ``action_dim``, ``image_size``, ``history``), implement
    ``act(frames [N, T, 3, H, W]) -> [N, A]`` (the action for the newest frame, unclipped) and the persistence
    hooks ``_checkpoint_meta`` / ``_from_checkpoint_meta``. The training interface matches what
    `foresight.train.Trainer` expects: ``forward(batch) -> (loss, metrics)``, ``stage``, ``set_stage``,
    ``trainable_parameters``, ``write_pretrained_files``.
    """

    type: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ("policy",)
    supports_batched_observations: ClassVar[bool] = True  # select_action takes [N, H, W, 3] from N envs
    config: Any

    def __init__(self) -> None:
        super().__init__()
        self.stage = self.stages[0]
        self._window: Tensor | None = None   # [N, T, 3, H, W] on the policy's device
        self._codes: Tensor | None = None    # [N, T, ...] per-frame cache of `encode_frames` (None: no cache)
        self._restart: Tensor | None = None  # bool [N]: rows whose next frame starts a new episode
        self._batched: bool | None = None
        self.use_frame_cache = True

    # ------------------------------------------------------------------ shape facts
    @property
    def action_dim(self) -> int:
        return int(self.config.action_dim)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def history(self) -> int:
        return int(self.config.history)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ acting
    @abc.abstractmethod
    def act(self, frames: Tensor, codes: Tensor | None = None) -> Tensor:
        """frames ``[N, T, 3, H, W]`` float in [0, 1] (T = history, newest last) -> actions ``[N, A]`` for the
        newest frame (not yet clipped). ``codes``: ``encode_frames`` of each frame, ``[N, T, ...]``, when cached
        (the same as encoding ``frames`` again)."""

    def encode_frames(self, frames: Tensor) -> Tensor | None:
        """Per-frame codes ``[N, T, ...]`` of frames ``[N, T, 3, H, W]`` that ``act`` can reuse, each computed
        from its own frame only; None (the default) when the policy has nothing to cache."""
        return None

    def reset(self, env_ids: Sequence[int] | Tensor | None = None) -> None:
        """Forget the frame history (of all envs, or only of ``env_ids`` in batched use)."""
        if env_ids is None or self._window is None:
            self._window, self._codes, self._restart, self._batched = None, None, None, None
            return
        ids = torch.as_tensor(env_ids, dtype=torch.long).reshape(-1)
        n = self._restart.shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise IndexError(f"reset: env ids {ids.tolist()} out of range for a history of {n} envs")
        self._restart[ids.to(self._restart.device)] = True

    def _push(self, frames: Tensor, batched: bool) -> tuple[Tensor, Tensor | None]:
        """Append frames ``[N, 3, H, W]`` (and their codes) to the history; return the windows
        ``([N, history, 3, H, W], [N, history, ...] or None)``."""
        n, t = frames.shape[0], self.history
        if self._window is not None and (self._window.shape[0] != n or self._batched != batched
                                         or self._window.device != frames.device):
            if not bool(self._restart.all()):
                raise ValueError(
                    f"select_action: got {n} observation(s) (batched={batched}) but the running history holds "
                    f"{self._window.shape[0]} (batched={self._batched}); call reset() when the number of envs changes")
            self._window = self._codes = None
        codes = self.encode_frames(frames[:, None]) if self.use_frame_cache else None
        codes = None if codes is None else codes[:, 0]  # [N, ...]
        if self._window is None:
            # episode start: pad by repeating the first frame, so the backbone always sees `history` frames
            self._window = _repeat_time(frames, t)
            self._codes = None if codes is None else _repeat_time(codes, t)
            self._restart = torch.zeros(n, dtype=torch.bool, device=frames.device)
            self._batched = batched
            return self._window, self._codes
        if (codes is None) != (self._codes is None):  # use_frame_cache switched mid-episode: rebuild the cache
            self._codes = None if codes is None else self.encode_frames(self._window)
        restart = self._restart if bool(self._restart.any()) else None
        self._window = _slide(self._window, frames, restart)
        if codes is not None:
            self._codes = _slide(self._codes, codes, restart)
        self._restart.zero_()
        return self._window, self._codes

    @torch.no_grad()
    def select_action(self, observation: Any) -> np.ndarray:
        """The action for the newest observation: ``float32 [A]`` (``[N, A]`` for a batch) clipped to [-1, 1].

        ``observation``: the env's dict ``{'image': uint8 [H, W, 3], 'state': ...}`` or the uint8 image; a batch
        ``[N, H, W, 3]`` from N vectorised envs. Runs in eval mode (restoring the previous mode afterwards).
        """
        frames, batched = observation_frames(observation, image_size=self.image_size)
        # Switching modes walks every submodule (about 2 ms a call for HARP, a tenth of a batch-1 step), so it
        # is done only when some submodule is in training mode: evaluation loops call this hundreds of times.
        was_training = self.training
        switch = was_training or any(m.training for m in self.modules())
        if switch:
            self.eval()
        try:
            window, codes = self._push(frames.to(self.device), batched)  # [N, T, 3, H, W], [N, T, ...]
            actions = self.act(window) if codes is None else self.act(window, codes)
        finally:
            if switch:
                self.train(was_training)
        if tuple(actions.shape) != (window.shape[0], self.action_dim):
            raise RuntimeError(f"{type(self).__name__}.act returned {list(actions.shape)}, "
                               f"expected {[window.shape[0], self.action_dim]}")
        out = actions.float().clamp(-1.0, 1.0).cpu().numpy()
        return out if batched else out[0]

    # ------------------------------------------------------------------ training interface (Trainer)
    def set_stage(self, stage: str) -> "Policy":
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r} for {type(self).__name__}; stages: {list(self.stages)}")
        self.stage = stage
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ persistence
    @abc.abstractmethod
    def _checkpoint_meta(self) -> dict[str, Any]:
        """JSON-safe dict from which ``_from_checkpoint_meta`` rebuilds an identical (untrained) module."""

    @classmethod
    @abc.abstractmethod
    def _from_checkpoint_meta(cls, meta: dict[str, Any], *, config_path: Path) -> "Policy":
        """Rebuild the module described by ``meta`` (weights are loaded afterwards)."""

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` atomically (replacing it)."""
        directory = Path(directory)
        with ckpt.atomic_directory(directory) as tmp:
            self.write_pretrained_files(tmp)
        return directory

    def write_pretrained_files(self, directory: Path, *, stats: dict[str, Any] | None = None) -> None:
        """Write the policy files into an existing (temporary) directory; the Trainer calls this."""
        meta = {"kind": "policy", "type": self.type, **self._checkpoint_meta()}
        (Path(directory) / ckpt.CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        ckpt.save_weights(self, Path(directory) / ckpt.WEIGHTS_NAME)
        if stats:
            (Path(directory) / ckpt.STATS_NAME).write_text(json.dumps(stats, indent=2) + "\n")


def _repeat_time(x: Tensor, t: int) -> Tensor:
    """``[N, ...]`` -> ``[N, t, ...]``: the same entry at every step of the window."""
    return x[:, None].expand(x.shape[0], t, *x.shape[1:]).clone()


def _slide(window: Tensor, new: Tensor, restart: Tensor | None) -> Tensor:
    """Drop the oldest entry of ``window [N, T, ...]`` and append ``new [N, ...]``; rows in ``restart`` (bool [N])
    start over: every step holds their new entry."""
    out = torch.cat([window[:, 1:], new[:, None]], dim=1)
    if restart is not None:
        out[restart] = _repeat_time(new[restart], window.shape[1])
    return out


def load_policy(path: str | Path, *, map_location: str | torch.device = "cpu") -> Policy:
    """Rebuild a saved policy (a policy dir, a ``checkpoints`` dir or a run dir); returns it in eval mode."""
    directory = ckpt.resolve_checkpoint(path)
    config_path = directory / ckpt.CONFIG_NAME
    meta = ckpt.read_json(config_path, what="policy config")
    if not isinstance(meta, dict) or "type" not in meta:
        raise ckpt.CheckpointError(f"corrupt policy config {config_path}: expected a mapping with a 'type' key")
    if meta.get("kind") != "policy":
        raise ckpt.CheckpointError(
            f"{config_path} describes a {meta.get('type')!r} world model, not a policy; load it with foresight.load")
    try:
        cls = get_policy_class(meta["type"])
    except KeyError as e:
        raise ckpt.CheckpointError(f"policy config {config_path}: {e.args[0]}") from None
    policy = cls._from_checkpoint_meta(meta, config_path=config_path)
    ckpt.load_weights(policy, directory / ckpt.WEIGHTS_NAME, device=map_location)
    return policy.to(map_location).eval()

