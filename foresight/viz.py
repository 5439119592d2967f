"""Pictures a person would rather look at: frame strips (PNG), GIFs and MP4s of real and imagined video.

All functions take frames as float ``[T, 3, H, W]`` in [0, 1] (torch or numpy) or uint8 ``[T, H, W, 3]``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from foresight.checkpoint import atomic_path, atomic_write_bytes


def to_uint8_hwc(frames) -> np.ndarray:
    """``[..., 3, H, W]`` float in [0, 1] (torch/numpy) or ``[..., H, W, 3]`` uint8 -> uint8 ``[..., H, W, 3]``."""
    try:
        import torch

        if isinstance(frames, torch.Tensor):
            frames = frames.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if frames.shape[-3] == 3 and frames.shape[-1] != 3:
        frames = np.moveaxis(frames, -3, -1)
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def frame_grid(rows: Sequence, *, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile rows of frames (each ``[T_i, ...]``) into one uint8 image; shorter rows are left blank."""
    rows = [to_uint8_hwc(r) for r in rows]
    if not rows:
        raise ValueError("frame_grid: expected at least one row of frames")
    h, w = rows[0].shape[1:3]
    cols = max(r.shape[0] for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, row in enumerate(rows):
        if row.shape[1:3] != (h, w):
            raise ValueError(f"frame_grid: row {i} has frames of {row.shape[1:3]}, expected {(h, w)}")
        for j, frame in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = frame
    return out


def save_png(path: str | Path, image: np.ndarray) -> Path:
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, image, extension=".png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_strip(path: str | Path, rows: Sequence, *, pad: int = 2) -> Path:
    """Save rows of frames (e.g. context / truth / sample 1 / sample 2) as one PNG."""
    return save_png(path, frame_grid(rows, pad=pad))


def save_gif(path: str | Path, frames, *, fps: int = 8) -> Path:
    """Save ``[T, ...]`` frames as a looping GIF."""
    import imageio.v3 as iio

    frames = to_uint8_hwc(frames)
    buf = io.BytesIO()
    iio.imwrite(buf, frames, extension=".gif", duration=int(1000 / fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_mp4(path: str | Path, frames, *, fps: int = 10) -> Path:
    """Save ``[T, ...]`` frames as an H.264 MP4 (through imageio-ffmpeg)."""
    import imageio

    frames = to_uint8_hwc(frames)
    path = Path(path)
    with atomic_path(path) as tmp:
        # macro_block_size=1 keeps small frames (64x64) unpadded.
        imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1)
    return path


def side_by_side(*videos, pad: int = 2) -> np.ndarray:
    """Concatenate videos ``[T, ...]`` horizontally frame by frame (e.g. real | imagined) -> uint8 [T, H, W', 3]."""
    videos = [to_uint8_hwc(v) for v in videos]
    t = min(v.shape[0] for v in videos)
    h = videos[0].shape[1]
    gap = np.full((t, h, pad, 3), 255, np.uint8)
    parts = []
    for i, v in enumerate(videos):
        if i:
            parts.append(gap)
        parts.append(v[:t])
    return np.concatenate(parts, axis=2)
