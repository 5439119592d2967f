"""Cached outputs of frozen GHVAE modules, so greedy phase k never re-runs modules 1..k-1.

In phase k the frozen encoders 1..k-1 map every frame of every clip to h^1..h^{k-1}; those never change during
the phase, so `GHVAE.stage_dataset` computes them once and `FeatureCacheDataset` serves them next to the clips
under the keys ``"h1" .. "h{k-1}"`` (``[T, C^j, H^j, W^j]`` per clip, ``[B, T, ...]`` per batch), and
`GHVAE.loss` reads them instead of running those encoders.

Storage is per *frame*: ``features[name]`` is ``[M, C, H, W]`` and ``index [num_clips, T]`` says which rows make
up each clip. For a `ClipDataset` (overlapping windows over one frame array) each distinct frame is encoded and
stored once, which is ``T / window_step`` times smaller than a per-clip cache; for any other dataset every clip
gets its own T rows. The cache lives in memory (``cache_dtype`` float16 halves it), unless the clip dataset's
frames are on disk (`ClipDataset(frames_dir=...)`, a `DiskFrames`): then the features go to raw files beside the
frame file (`DiskFeatures`, keyed by the frozen encoders' weights and the frames used, reused while both are
unchanged), so a dataset larger than memory trains with features larger than memory. Clips are served without
augmentation, because the features were computed on un-augmented frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from foresight.data.cache import clip_frame_index, gather_clips  # noqa: F401  (re-exported)

__all__ = ["FeatureCacheDataset", "DiskFeatures", "gather_clips", "clip_frame_index"]

_BITS = {torch.float16: np.int16, torch.bfloat16: np.int16, torch.float32: np.float32}  # how a dtype is stored


class DiskFeatures:
    """Per-frame features ``[M, C, H, W]`` in a raw file, served by rows like the in-memory tensor.

    16-bit floats are stored as their bits (numpy has no bfloat16) and viewed back on reading. Reads go through
    `foresight.data.frame_store.DiskFrames` (``os.pread`` of the rows asked for; nothing memory-mapped).
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: torch.dtype):
        from foresight.data.frame_store import DiskFrames

        self.dtype = dtype
        self.file = DiskFrames(path, shape, dtype=_BITS[dtype])
        self.shape = torch.Size(shape)

    def __getitem__(self, rows: Tensor) -> Tensor:
        out = torch.from_numpy(self.file[np.asarray(rows, dtype=np.int64)])
        return out.view(self.dtype) if out.dtype != self.dtype else out

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @staticmethod
    def bits(chunk: Tensor, dtype: torch.dtype) -> bytes:
        """The bytes a chunk ``[n, ...]`` of features is stored as."""
        chunk = chunk.to("cpu", dtype).contiguous()
        return (chunk.view(torch.int16) if _BITS[dtype] is np.int16 else chunk).numpy().tobytes()


class FeatureCacheDataset(torch.utils.data.Dataset):
    """A clip dataset plus cached per-frame features: ``features[name] [M, C, H, W]``, ``index [len, T]``.

    Indexes like the base dataset (``ds[i]`` -> dict, ``ds.get_batch(indices)`` -> batch dict) and forwards
    any other attribute (``image_size``, ``action_dim``, ``set_epoch``...) to it.
    """

    def __init__(self, base: Any, features: dict[str, Tensor], index: Tensor):
        if index.ndim != 2 or index.shape[0] != len(base):
            raise ValueError(f"index: expected [{len(base)}, T], got {list(index.shape)}")
        for name, value in features.items():
            if value.shape[0] <= int(index.max()):
                raise ValueError(f"feature {name!r} has {value.shape[0]} rows, index needs {int(index.max()) + 1}")
        self.base = base
        self.features = features
        self.index = index.long()

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "features", "index"):  # not set yet (e.g. during unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.get_batch([i])
        return {k: (v[0] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()}

    def get_batch(self, indices: Sequence[int], *, rng: Any = None, augment: bool = True) -> dict[str, Any]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        batch = dict(gather_clips(self.base, idx.numpy()))
        rows = self.index[idx]  # [B, T]
        for name, value in self.features.items():
            batch[name] = value[rows]  # [B, T, C, H, W] in the cache dtype; loss casts to float32
        return batch

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.features.values())
