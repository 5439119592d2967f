"""Cached outputs of frozen GHVAE modules, so greedy phase k never re-runs modules 1..k-1.

In phase k the frozen encoders 1..k-1 map every frame of every clip to h^1..h^{k-1}; those never change during
the phase, so `GHVAE.stage_dataset` computes them once and `FeatureCacheDataset` serves them next to the clips
under the keys ``"h1" .. "h{k-1}"`` (each ``[T, C^j, H^j, W^j]`` per clip, ``[B, T, ...]`` per batch), and
`GHVAE.loss` reads them instead of running those encoders. The cache lives in memory (``cache_dtype`` halves it);
clips are served without augmentation, because the features were computed on un-augmented frames.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureCacheDataset", "gather_clips"]


def gather_clips(dataset: Any, indices: Sequence[int]) -> dict[str, Any]:
    """A batch dict of clips ``indices`` of ``dataset``, un-augmented (``get_batch`` when the dataset has it)."""
    idx = np.asarray(indices, dtype=np.int64)
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is not None:
        try:
            return get_batch(idx, augment=False)
        except TypeError:  # a get_batch without the augment switch
            return get_batch(idx)
    items = [dataset[int(i)] for i in idx]
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack([torch.as_tensor(v) for v in values]) if isinstance(values[0], (Tensor, np.ndarray, int, float)) else values
    return out


class FeatureCacheDataset(torch.utils.data.Dataset):
    """A clip dataset plus per-clip cached features (``features[name]`` is ``[len(base), T, C, H, W]``).

    Indexes like the base dataset (``ds[i]`` -> dict, ``ds.get_batch(indices)`` -> batch dict) and forwards
    any other attribute (``image_size``, ``action_dim``, ``set_epoch``...) to it.
    """

    def __init__(self, base: Any, features: dict[str, Tensor]):
        n = len(base)
        for name, value in features.items():
            if value.shape[0] != n:
                raise ValueError(f"feature {name!r}: expected {n} clips on axis 0, got {list(value.shape)}")
        self.base = base
        self.features = features

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "features"):  # not set yet (e.g. during unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.get_batch([i])
        return {k: (v[0] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()}

    def get_batch(self, indices: Sequence[int], *, rng: Any = None, augment: bool = True) -> dict[str, Any]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        batch = dict(gather_clips(self.base, idx.numpy()))
        for name, value in self.features.items():
            batch[name] = value[idx]  # [B, T, C, H, W] in the cache dtype; loss casts to float32
        return batch

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.features.values())
