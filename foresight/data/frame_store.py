"""Frames on disk for clip datasets larger than memory.

`ClipDataset` keeps every frame of a split in one uint8 array ``[N, 3, H, W]`` and gathers clips from it by fancy
indexing (about 2.7 GiB for the 2,500 Meta-World demos at 64x64). With ``frames_dir=`` it keeps them in a raw file
instead, `DiskFrames`, which answers the same indexing (``frames[idx]`` for int arrays of any shape, ``frames[a:b]``,
``.shape``, ``.dtype``) by reading only the frames asked for with ``os.pread``: a clip of T consecutive frames is
one read. Nothing is memory-mapped, so the process's resident memory stays at the size of a batch whatever the file
size (the operating system's page cache still serves hot data, outside the process). Each process opens its own
file descriptor on first use, so `torch.utils.data.DataLoader` workers and DDP ranks share one file.

The file is built once from the episode store and reused while the store is unchanged: its sidecar JSON records
the frame shape and a key derived from the episodes (file names, sizes and CRC-32s from the manifest); a different
key rebuilds it. Writing goes episode by episode to a temporary file renamed into place, so a killed build leaves
no half file behind.

    train = ClipDataset(EpisodeDataset(root, split="train"), context=2, future=10, frames_dir="data/cache/frames")
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from foresight.checkpoint import atomic_path, atomic_write_text

__all__ = ["DiskFrames", "episodes_key", "open_or_build"]

_MAX_RUN = 512  # frames per read: bounds the bytes of one pread for long runs of consecutive indices


class DiskFrames:
    """Read-only frames ``[N, *frame_shape]`` (uint8 unless ``dtype`` says otherwise) in a raw file, indexed like a
    numpy array."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: Any = np.uint8):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        expected = self.shape[0] * self._frame_bytes
        size = self.path.stat().st_size
        if size != expected:
            raise ValueError(f"frame file {self.path} has {size} bytes, expected {expected} for frames {list(shape)}")
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # pickled into DataLoader workers: no file descriptor travels
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                return self._read_run(start, max(stop - start, 0))
            index = np.arange(start, stop, step)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.shape[0] if int(index) < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"frame {index} out of range for {self.shape[0]} frames")
            return self._read_run(i, 1)[0]
        idx = np.asarray(index)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"DiskFrames takes int indices, slices or int arrays, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + self.shape[0], flat)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(f"frame index out of range for {self.shape[0]} frames")
        out = np.empty((flat.size, *self.shape[1:]), dtype=self.dtype)
        if flat.size:
            order = np.argsort(flat, kind="stable")
            sorted_idx = flat[order]
            unique, first = np.unique(sorted_idx, return_index=True)
            # runs of consecutive frame numbers: one read each
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            data = np.empty((unique.size, *self.shape[1:]), dtype=self.dtype)
            for run in np.split(np.arange(unique.size), breaks):
                for lo in range(0, run.size, _MAX_RUN):
                    part = run[lo:lo + _MAX_RUN]
                    data[part] = self._read_run(int(unique[part[0]]), part.size)
            pos = np.searchsorted(unique, flat)
            out[:] = data[pos]
        return out.reshape(*idx.shape, *self.shape[1:])

    def _read_run(self, start: int, count: int) -> np.ndarray:
        nbytes = count * self._frame_bytes
        buf = bytearray(nbytes)
        view, done = memoryview(buf), 0
        fd = self._descriptor()
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], start * self._frame_bytes + done)
            if n <= 0:
                raise OSError(f"frame file {self.path}: short read at frame {start}")
            done += n
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, *self.shape[1:])


def episodes_key(records: Iterable[Any], extra: dict[str, Any] | None = None) -> str:
    """A key that changes whenever the episodes (or the layout options in ``extra``) do: SHA-256 over each
    manifest record's file, size and CRC-32."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.file}|{r.nbytes}|{r.crc32}|{r.length}\n".encode())
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def open_or_build(directory: str | os.PathLike, key: str, shape: tuple[int, ...],
                  write_frames: Callable[[Callable[[np.ndarray], None]], None]) -> tuple[DiskFrames, bool]:
    """The frame file for ``key`` in ``directory``: opened when present and complete, else built.

    ``write_frames(write)`` must call ``write(frames uint8 [T, *frame_shape])`` for every episode in order.
    Returns ``(frames, built)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data, sidecar = directory / f"frames_{key}.u8", directory / f"frames_{key}.json"
    if data.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("key") == key and tuple(meta.get("shape", ())) == tuple(shape):
            return DiskFrames(data, shape), False
    written = 0
    with atomic_path(data) as tmp:
        with open(tmp, "wb") as f:
            def write(frames: np.ndarray) -> None:
                nonlocal written
                frames = np.ascontiguousarray(frames, dtype=np.uint8)
                if tuple(frames.shape[1:]) != tuple(shape[1:]):
                    raise ValueError(f"frames {list(frames.shape)} do not match the file's frame shape "
                                     f"{list(shape[1:])}")
                f.write(frames.tobytes())
                written += len(frames)

            write_frames(write)
        if written != shape[0]:
            raise ValueError(f"wrote {written} frames, expected {shape[0]}")
    atomic_write_text(sidecar, json.dumps({"key": key, "shape": list(shape)}))
    return DiskFrames(data, shape), True
