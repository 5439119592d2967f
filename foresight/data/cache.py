"""Stage datasets computed once from clip datasets: what a frozen part of a model (a tokenizer, a VQ-VAE) makes of
every clip, kept in memory (codes are small) and served in place of the clips while the next stage trains;
`FrameIndexedCodes` keeps codes once per frame and reads context pixels from the clip dataset's frames (on disk
when the dataset is).

`gather_clips` reads a batch of clips un-augmented; `encode_clips` runs a model's encoder over a whole clip
dataset in order and keeps, beside its outputs, the clips' actions and task ids; `CachedCodes` serves discrete
codes (+ those extras) as a dataset.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from foresight.world_model import as_float_frames

__all__ = ["CachedCodes", "FrameIndexedCodes", "gather_clips", "encode_clips", "code_dtype", "clip_frame_index",
           "distinct_frame_batches"]


class CachedCodes(torch.utils.data.Dataset):
    """Stage-2 training data: the frozen tokenizer's codes of every clip, computed once.

    Items: ``codes`` int64 [C+F, h, w], ``actions`` float32 [C+F-1, A] (when present), ``context`` uint8
    [C, 3, H, W] (pixels of the context frames, for the ResNet context features) and ``task`` when present.
    Augmentation of the source clip dataset is frozen at caching time (one draw per clip).
    """

    def __init__(self, codes: Tensor, extras: dict[str, Tensor]):
        self.codes, self.extras = codes, extras

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"codes": self.codes[i].long()}
        item.update({k: v[i] for k, v in self.extras.items()})
        return item


class FrameIndexedCodes(CachedCodes):
    """`CachedCodes` stored once per frame rather than once per clip.

    ``frame_codes`` [U, h, w]: the codes of every stored frame that some clip uses; ``clip_frames`` [clips, T]:
    each clip's frames as rows of ``frame_codes``. Overlapping clips (a window every ``window_step`` frames) share
    most frames, so this holds T / window_step times fewer codes than one array per clip. The context pixels
    (``context`` items, for HARP's ResNet features) are read on demand from ``frames`` (the clip dataset's frame
    array, or its `foresight.data.frame_store.DiskFrames` on disk) at ``context_index`` [clips, C], not copied per
    clip: a dataset larger than memory stays on disk. Items equal those of `CachedCodes` built clip by clip.
    """

    def __init__(self, frame_codes: Tensor, clip_frames: Tensor, extras: dict[str, Tensor], *,
                 frames: Any = None, context_index: np.ndarray | None = None):
        if (frames is None) != (context_index is None):
            raise ValueError("FrameIndexedCodes: pass both frames and context_index, or neither")
        self.frame_codes, self.clip_frames, self.extras = frame_codes, clip_frames, extras
        self.frames, self.context_index = frames, context_index
        self._chw = frames is None or frames.shape[1] == 3  # stored [N, 3, H, W] or [N, H, W, 3]

    @property
    def codes(self) -> Tensor:
        """Codes of every clip [clips, T, h, w] (materialised: for inspection, not for training loops)."""
        return self.frame_codes[self.clip_frames]

    def __len__(self) -> int:
        return self.clip_frames.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"codes": self.frame_codes[self.clip_frames[i]].long()}
        item.update({k: v[i] for k, v in self.extras.items()})
        if self.frames is not None:
            context = np.asarray(self.frames[self.context_index[i]])  # [C, 3, H, W] or [C, H, W, 3] uint8
            if not self._chw:
                context = np.moveaxis(context, -1, -3)
            item["context"] = torch.from_numpy(np.ascontiguousarray(context))
        return item


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
        if isinstance(values[0], (Tensor, np.ndarray, int, float)):
            out[key] = torch.stack([torch.as_tensor(v) for v in values])
        else:
            out[key] = values
    return out


def code_dtype(codebook_size: int) -> torch.dtype:
    """The smallest integer dtype that stores codes of a codebook of this size (int16 up to 32767 codes)."""
    return torch.int16 if codebook_size <= 32767 else torch.int32


@torch.no_grad()
def encode_clips(dataset: Any, encode: Callable[[Tensor, dict[str, Any]], dict[str, Tensor]], *, length: int,
                 batch_size: int = 32, desc: str = "caching") -> dict[str, Tensor]:
    """``encode(frames [b, length, 3, H, W] float in [0, 1], batch) -> {name: [b, ...]}`` over every clip of
    ``dataset`` in order (un-augmented, `gather_clips`), concatenated per name on the CPU; the clips' ``actions``
    (float32) and ``task`` are added when the dataset has them. The caller sets eval mode and the device."""
    from tqdm.auto import tqdm

    parts: dict[str, list[Tensor]] = {}
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, leave=False):
        batch = gather_clips(dataset, range(start, min(start + batch_size, len(dataset))))
        frames = as_float_frames(torch.as_tensor(batch["frames"])[:, :length])
        out = dict(encode(frames, batch))
        for key, cast in (("actions", torch.float32), ("task", None)):
            if isinstance(batch.get(key), Tensor) and key not in out:
                out[key] = batch[key] if cast is None else batch[key].to(cast)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.detach().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def clip_frame_index(dataset: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """For a dataset of windows over one frame array (a `ClipDataset`: ``frames [N, H, W, 3]``, ``starts``,
    ``stride``, ``clip_length``): (distinct frame ids used ``[M]``, per-clip rows into them ``[num_clips, T]``).
    None for other datasets."""
    starts = getattr(dataset, "starts", None)
    frames = getattr(dataset, "frames", None)
    if starts is None or frames is None or not hasattr(dataset, "clip_length"):
        return None
    stride = int(getattr(dataset, "stride", 1))
    fidx = np.asarray(starts, np.int64)[:, None] + np.arange(dataset.clip_length, dtype=np.int64)[None] * stride
    used, rows = np.unique(fidx, return_inverse=True)
    return used, rows.reshape(fidx.shape)


def distinct_frame_batches(frames: Any, used: np.ndarray, *, batch_size: int, device: Any = "cpu",
                           desc: str = "caching frames"):
    """Batches ``[n, 3, H, W]`` float in [0, 1] on ``device`` of the stored frames ``used`` (in order), from a
    frame array ``[N, 3, H, W]`` or ``[N, H, W, 3]`` (uint8, or float in [0, 1]) or a `DiskFrames`: what a
    model's frozen encoder needs to encode every distinct frame of a `ClipDataset` once."""
    from tqdm.auto import tqdm

    channels_last = frames.shape[-1] == 3 and frames.shape[1] != 3
    for start in tqdm(range(0, len(used), batch_size), desc=desc, leave=False):
        raw = torch.as_tensor(np.asarray(frames[used[start:start + batch_size]]))
        raw = raw.permute(0, 3, 1, 2) if channels_last else raw
        batch = raw.to(device, torch.float32)
        yield batch / 255.0 if raw.dtype == torch.uint8 else batch
