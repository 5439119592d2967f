"""The on-disk episode format: an append-only, crash-safe, validated store of robot episodes.

One dataset is one directory::

    root/
      meta.json              dataset-wide facts (image size, camera, action/state dims, collection settings)
      manifest.jsonl         one JSON line per finished (task, variation): an episode record or a failure record
      episodes/<task>/<variation:05d>.npz   one uncompressed-header, zlib-compressed npz per episode

An episode (what `save_episode` takes and `EpisodeDataset[i]` returns) is a dict of numpy arrays::

    frames   uint8   [T, H, W, 3]   RGB observations
    actions  float32 [T-1, A]       actions[t] moves frames[t] to frames[t+1]
    states   float32 [T, S]         robot/object state beside each frame (optional)
    rewards  float32 [T-1]          reward returned by the step that produced frames[t+1] (optional)
    success  bool    [T]            task solved at frame t (success[0] describes the reset frame) (optional)
    ...      any further numpy array is stored as given (e.g. 'sim_states' float64 [T, n] for exact replay)

plus ``task`` (str), ``variation`` (int) and ``split`` ('train' | 'test') taken from the manifest.

Why this layout: each episode file is written to a temporary name, fsynced and renamed, so a file either exists
whole or not at all; the manifest line that makes it visible is appended (one ``write`` of one line, fsynced)
only after the rename. A kill at any point therefore loses at most the episode being written, and a resumed
collection skips exactly the (task, variation) pairs in the manifest: nothing is written twice or lost.
Each record stores the file's byte size and CRC-32, so a truncated or corrupted file is detected at load time and
reported by path (`CorruptEpisodeError`). Failed collection attempts are recorded too (``status: "failed"``), so
they are counted and not retried on resume, but never returned as episodes.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from foresight.checkpoint import atomic_write_bytes

__all__ = [
    "CorruptEpisodeError",
    "EpisodeRecord",
    "EpisodeWriter",
    "EpisodeDataset",
    "save_episode",
    "load_episode",
    "read_manifest",
    "read_meta",
    "validate_episode",
    "MANIFEST",
    "META",
]

MANIFEST = "manifest.jsonl"
META = "meta.json"
FORMAT_VERSION = 1


class CorruptEpisodeError(ValueError):
    """A dataset file is missing, truncated or fails its checksum. The message names the file."""


@dataclass(frozen=True)
class EpisodeRecord:
    """One manifest line. ``file`` is relative to the dataset root (None for failures)."""

    task: str
    variation: int
    split: str
    status: str = "ok"  # "ok" | "failed"
    file: str | None = None
    length: int = 0  # number of frames T (for failures: steps taken)
    nbytes: int = 0
    crc32: int = 0
    first_success: int | None = None  # first frame index with success, None if never
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.task, self.variation)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpisodeRecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------- files




def validate_episode(ep: dict[str, np.ndarray], *, name: str = "episode") -> None:
    """Check shapes and dtypes of an episode dict; raise ValueError naming expected vs received."""
    if "frames" not in ep or "actions" not in ep:
        raise ValueError(f"{name}: needs 'frames' and 'actions', got keys {sorted(ep)}")
    frames, actions = np.asarray(ep["frames"]), np.asarray(ep["actions"])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    T = frames.shape[0]
    if T < 1:
        raise ValueError(f"{name}: needs at least one frame, got {list(frames.shape)}")
    if actions.ndim != 2 or actions.shape[0] != T - 1:
        raise ValueError(f"{name}: actions must be [T-1={T - 1}, A], got {list(actions.shape)}")
    if "states" in ep and (np.ndim(ep["states"]) != 2 or len(ep["states"]) != T):
        raise ValueError(f"{name}: states must be [T={T}, S], got {list(np.shape(ep['states']))}")
    if "rewards" in ep and np.shape(ep["rewards"]) != (T - 1,):
        raise ValueError(f"{name}: rewards must be [T-1={T - 1}], got {list(np.shape(ep['rewards']))}")
    if "success" in ep and np.shape(ep["success"]) != (T,):
        raise ValueError(f"{name}: success must be [T={T}], got {list(np.shape(ep['success']))}")


def _encode_episode(ep: dict[str, np.ndarray]) -> bytes:
    # The standard arrays get fixed dtypes; any further array (e.g. 'sim_states' [T, n]) is stored as given.
    dtypes = {"frames": np.uint8, "actions": np.float32, "states": np.float32, "rewards": np.float32,
              "success": bool}
    arrays = {}
    for k, v in ep.items():
        if k in dtypes:
            arrays[k] = np.ascontiguousarray(v, dtype=dtypes[k])
        elif isinstance(v, np.ndarray) and v.dtype != object:
            arrays[k] = v
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def episode_path(task: str, variation: int) -> str:
    """Relative path of an episode file inside a dataset root."""
    return f"episodes/{task}/{int(variation):05d}.npz"


def save_episode(
    root: str | os.PathLike,
    episode: dict[str, np.ndarray],
    *,
    task: str,
    variation: int,
    split: str,
    extra: dict[str, Any] | None = None,
) -> EpisodeRecord:
    """Validate, compress and atomically write one episode under ``root``; return its manifest record.

    Safe to call from worker processes: it touches only the episode's own file. The episode becomes part of the
    dataset when the returned record is appended with `EpisodeWriter.append` (single writer of the manifest).
    """
    validate_episode(episode, name=f"{task}/{variation}")
    data = _encode_episode(episode)
    rel = episode_path(task, variation)
    atomic_write_bytes(Path(root) / rel, data)
    success = np.asarray(episode.get("success", np.zeros(0, bool)), dtype=bool)
    first = int(np.argmax(success)) if success.any() else None
    return EpisodeRecord(
        task=task, variation=int(variation), split=split, status="ok", file=rel,
        length=int(len(episode["frames"])), nbytes=len(data), crc32=zlib.crc32(data) & 0xFFFFFFFF,
        first_success=first, extra=dict(extra or {}),
    )


def load_episode(path: str | os.PathLike, *, nbytes: int | None = None, crc32: int | None = None,
                 keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read one episode file, checking its size and checksum when given. Raises CorruptEpisodeError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptEpisodeError(f"episode file missing: {path}") from None
    if nbytes is not None and len(data) != nbytes:
        raise CorruptEpisodeError(f"episode file truncated or altered: {path} has {len(data)} bytes, "
                                  f"manifest says {nbytes}")
    if crc32 is not None and (zlib.crc32(data) & 0xFFFFFFFF) != crc32:
        raise CorruptEpisodeError(f"episode file fails its CRC-32 check (corrupt): {path}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            wanted = [k for k in keys if k in z.files] if keys is not None else list(z.files)
            ep = {k: z[k] for k in wanted}
    except Exception as e:  # zipfile.BadZipFile, zlib.error, ValueError, EOFError ...
        raise CorruptEpisodeError(f"episode file cannot be decoded: {path} ({type(e).__name__}: {e})") from e
    if "frames" in ep and "actions" in ep:
        try:
            validate_episode(ep, name=str(path))
        except ValueError as e:
            raise CorruptEpisodeError(str(e)) from e
    return ep


# --------------------------------------------------------------------------------------------- manifest


def read_meta(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / META
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptEpisodeError(f"dataset meta file is corrupt: {path} ({e})") from e


def read_manifest(root: str | os.PathLike, *, include_failed: bool = False) -> list[EpisodeRecord]:
    """All records of a dataset, in the order written. The last record wins if a key repeats.

    A final line without its newline is the trace of a kill during an append: it is ignored (the writer
    repairs it). A malformed line anywhere else means the manifest was damaged: CorruptEpisodeError names it.
    """
    path = Path(root) / MANIFEST
    if not path.exists():
        if not Path(root).is_dir():
            raise FileNotFoundError(f"no dataset at {root}")
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
    del tail
    by_key: dict[tuple[str, int], EpisodeRecord] = {}
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            rec = EpisodeRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise CorruptEpisodeError(f"manifest line {i + 1} is corrupt: {path} ({e})") from e
        by_key.pop(rec.key, None)  # keep insertion order of the latest write
        by_key[rec.key] = rec
    records = list(by_key.values())
    return records if include_failed else [r for r in records if r.status == "ok"]


class EpisodeWriter:
    """Single writer of a dataset's manifest (the main process of a collection).

    ``meta`` is written on creation; reopening an existing dataset with conflicting ``meta`` values raises
    ValueError (so a 128px collection cannot be appended to a 64px dataset by mistake).
    """

    def __init__(self, root: str | os.PathLike, *, meta: dict[str, Any] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        old = read_meta(self.root)
        # JSON round trip so tuples compare equal to the lists read back from disk
        new = json.loads(json.dumps({"format_version": FORMAT_VERSION, **(meta or {})}))
        if old:
            clash = {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}
            if clash:
                raise ValueError(f"dataset {self.root} was written with different settings "
                                 f"(existing, requested): {clash}")
            merged = {**new, **old}
        else:
            merged = new
        if merged != old:
            atomic_write_bytes(self.root / META, json.dumps(merged, indent=1, sort_keys=True).encode())
        self.meta = merged
        self._repair_manifest_tail()
        self.records = read_manifest(self.root, include_failed=True)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def _repair_manifest_tail(self) -> None:
        # A kill during an append can leave a partial last line; cut it so the next append starts clean.
        path = self.manifest_path
        if not path.exists():
            return
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            keep = raw.rfind(b"\n") + 1
            with open(path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def done_keys(self) -> set[tuple[str, int]]:
        """(task, variation) pairs already finished (successful or failed): skip these on resume."""
        return {r.key for r in self.records}

    def append(self, record: EpisodeRecord) -> None:
        """Durably add one record: one write of one full line, then fsync."""
        line = (record.to_json() + "\n").encode()
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)

    def write(self, episode: dict[str, np.ndarray], *, task: str, variation: int, split: str,
              extra: dict[str, Any] | None = None) -> EpisodeRecord:
        """Save an episode file and append its record (the single-process path)."""
        rec = save_episode(self.root, episode, task=task, variation=variation, split=split, extra=extra)
        self.append(rec)
        return rec

    def record_failure(self, *, task: str, variation: int, split: str, length: int,
                       extra: dict[str, Any] | None = None) -> EpisodeRecord:
        rec = EpisodeRecord(task=task, variation=int(variation), split=split, status="failed",
                            length=int(length), extra=dict(extra or {}))
        self.append(rec)
        return rec


# --------------------------------------------------------------------------------------------- reading


class EpisodeDataset(Sequence[dict]):
    """Read access to the successful episodes of a dataset directory.

    Args:
        root: dataset directory.
        split: 'train', 'test' or None (both).
        tasks: keep only these task names (None = all).
        verify: check every file's size and CRC-32 when it is read (cheap next to decompression).
        keys: arrays to load (default: all arrays in the file).

    ``ds[i]`` returns a dict of numpy arrays (see module docstring) plus 'task', 'variation', 'split'.
    Construction checks that every listed file exists with the recorded size, so a missing or truncated file
    fails early with its path.
    """

    def __init__(self, root: str | os.PathLike, *, split: str | None = None,
                 tasks: Iterable[str] | None = None, verify: bool = True, keys: Sequence[str] | None = None):
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.verify = verify
        self.keys = tuple(keys) if keys is not None else None
        records = read_manifest(self.root)
        task_set = set(tasks) if tasks is not None else None
        self.records: list[EpisodeRecord] = [
            r for r in records
            if (split is None or r.split == split) and (task_set is None or r.task in task_set)
        ]
        for r in self.records:
            p = self.root / r.file
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                raise CorruptEpisodeError(f"episode file missing: {p}") from None
            if size != r.nbytes:
                raise CorruptEpisodeError(f"episode file truncated or altered: {p} has {size} bytes, "
                                          f"manifest says {r.nbytes}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        r = self.records[i]
        ep: dict[str, Any] = load_episode(
            self.root / r.file, nbytes=r.nbytes if self.verify else None,
            crc32=r.crc32 if self.verify else None, keys=self.keys,
        )
        ep.update(task=r.task, variation=r.variation, split=r.split)
        return ep

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    @property
    def task_names(self) -> list[str]:
        """Sorted task names present in this selection."""
        return sorted({r.task for r in self.records})

    @property
    def num_frames(self) -> int:
        return sum(r.length for r in self.records)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per task: episodes per split and failures recorded in the manifest."""
        out: dict[str, Counter] = {}
        for r in read_manifest(self.root, include_failed=True):
            c = out.setdefault(r.task, Counter())
            c[r.split if r.status == "ok" else "failed"] += 1
        return {t: dict(c) for t, c in sorted(out.items())}
