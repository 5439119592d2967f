"""LeRobot datasets (codebase v2.1 and v3.0) from a local folder as episodes and clips (the exporter:
`foresight.data.lerobot_export`).

    from foresight.data.lerobot import LeRobotEpisodes, lerobot_clips
    from foresight.data.lerobot_export import write_lerobot
    clips = lerobot_clips("~/lerobot/pusht", context=1, future=11, image_size=64, action_dim=4)   # a ClipDataset
    batch = clips.get_batch([0, 1])            # frames [2, 12, 3, 64, 64] float in [0, 1], actions [2, 11, 4]
    write_lerobot("data/metaworld_64", "data/metaworld_64_lerobot")   # episode store -> LeRobot v3.0

Nothing is downloaded and the ``lerobot`` package is not needed: parquet through ``pyarrow``, MP4 through PyAV.

Layout read (LeRobotDataset, https://github.com/huggingface/lerobot)::

    meta/info.json        codebase_version, fps, features {key: {dtype, shape, names}}, data_path, video_path,
                          chunks_size, splits {"train": "0:N", ...}
    v2.1  meta/episodes.jsonl   {"episode_index", "tasks": [str], "length"} per line
          meta/tasks.jsonl      {"task_index", "task"} per line
          data_path  "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"   one episode per file
          video_path "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
          (episode_chunk = episode_index // chunks_size)
    v3.0  meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode: episode_index, tasks, length,
                          data/chunk_index, data/file_index, and per camera videos/<key>/chunk_index,
                          videos/<key>/file_index, videos/<key>/from_timestamp, videos/<key>/to_timestamp
          meta/tasks.parquet    task_index + the task string (column 'task', pandas' index of the table)
          data_path  "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"        several episodes per file
          video_path "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"  several per file:
                          an episode is the frames with from_timestamp <= t < to_timestamp
    frame tables          one row per frame: action, observation.state, episode_index, frame_index, timestamp,
                          task_index, index; features of dtype 'image' are columns of {bytes, path} (PNG/JPEG)
    (v2.0 has the v2.1 layout and is read the same way.)

Conventions. LeRobot stores one action per frame, the action taken at that frame; here ``actions[t]`` moves
frame t to frame t + 1, so an episode of T frames keeps the actions of frames 0..T-2 and drops the last one (the
exporter writes zeros there). Frame k of an episode is the video frame whose timestamp is closest to
``from_timestamp + k / fps`` (within half a frame); fewer such frames than frame-table rows is an error.
Images are resized to ``image_size`` x ``image_size`` (area averaging, `resize_frames`; the aspect ratio is not
kept). Action width: with ``action_dim`` set, narrower actions are zero-padded and wider ones cut to their
first ``action_dim`` entries (`foresight.data.robonet.harmonise_actions`, the RoboNet 'pad' / 'cut' rules);
states are never changed.

Speed: a v3.0 file is decoded forward once for all its episodes (a seek only when an episode starts before the
decoder's position), so building a `ClipDataset` costs one decode of each video; batches then come from the
in-memory arrays of `ClipDataset` at its usual speed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from foresight.data.clips import ClipDataset
from foresight.data.robonet import harmonise_actions
from foresight.data.robonet_io import resize_frames

__all__ = ["LeRobotFormatError", "LeRobotEpisodes", "LeRobotEpisodeRecord", "lerobot_clips", "read_info",
           "camera_keys", "SUPPORTED_VERSIONS", "V30_DATA_PATH", "V30_VIDEO_PATH"]

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
INFO = "meta/info.json"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CAMERA_DTYPES = ("video", "image")


class LeRobotFormatError(ValueError):
    """A LeRobot folder that cannot be read as documented; the message names the file and what was expected."""


# --------------------------------------------------------------------------------------------- meta files


def read_info(root: str | os.PathLike) -> dict[str, Any]:
    """``meta/info.json`` of a dataset folder, checked: a supported version, fps, features and path templates."""
    path = Path(root).expanduser() / INFO
    if not path.is_file():
        what = "folder does not exist" if not Path(root).expanduser().is_dir() else "file is missing"
        raise LeRobotFormatError(f"{path}: {what}; expected a LeRobot dataset folder with meta/info.json "
                                 f"(codebase version {' or '.join(SUPPORTED_VERSIONS)})")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeRobotFormatError(f"{path}: not valid JSON ({e})") from e
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise LeRobotFormatError(f"{path}: codebase_version {version!r} is not supported; expected one of "
                                 f"{list(SUPPORTED_VERSIONS)} (convert older datasets with LeRobot's converters)")
    for key, kind in (("features", dict), ("data_path", str)):
        if not isinstance(info.get(key), kind):
            raise LeRobotFormatError(f"{path}: expected '{key}' ({kind.__name__}), got {info.get(key)!r}")
    if not isinstance(info.get("fps"), (int, float)) or info["fps"] <= 0:
        raise LeRobotFormatError(f"{path}: expected a positive 'fps', got {info.get('fps')!r}")
    return info


def camera_keys(info: dict[str, Any]) -> list[str]:
    """Feature keys of dtype 'video' or 'image', in the order of ``info['features']``."""
    return [k for k, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") in CAMERA_DTYPES]


def _resolve_camera(info: dict[str, Any], camera: str | None, path: Path) -> str:
    cams = camera_keys(info)
    if not cams:
        raise LeRobotFormatError(f"{path}: no camera feature (dtype 'video' or 'image'); features are "
                                 f"{sorted(info['features'])}")
    if not camera:
        return cams[0]
    for key in (camera, f"observation.images.{camera}"):
        if key in cams:
            return key
    raise LeRobotFormatError(f"{path}: camera {camera!r} is not a feature of this dataset; camera keys are {cams} "
                             f"(all features: {sorted(info['features'])})")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing; expected one JSON object per line")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LeRobotFormatError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
    return rows


def _read_parquet(path: Path, columns: Sequence[str] | None = None, *, what: str = "parquet table"):
    """``pyarrow.Table`` of ``path``; a missing, truncated or non-parquet file or a missing column is an error
    naming the file (and, for columns, the ones that are there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing; expected the {what}")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path}: cannot be read as parquet (truncated or not a parquet file: {e}); "
                                 f"expected the {what}") from e
    names = pf.schema_arrow.names
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise LeRobotFormatError(f"{path}: the {what} has no column {missing}; its columns are {names}")
    try:
        return pf.read(columns=list(columns) if columns is not None else None)
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path}: parquet data is corrupt or truncated ({e}); expected the {what}") from e


def _scalars(table, name: str) -> np.ndarray:
    """A scalar column (or a list column of width 1) -> 1-D numpy array."""
    col = table.column(name).combine_chunks()
    if _is_list(col.type):
        return _vectors(table, name, None)[:, 0]
    return col.to_numpy(zero_copy_only=False)


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _vectors(table, name: str, path: Path | None) -> np.ndarray:
    """A list column of equal-width rows (or a scalar column) -> 2-D numpy array [rows, width]."""
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    n = len(col)
    if col.null_count:
        raise LeRobotFormatError(f"{path}: column {name!r} has {col.null_count} empty rows; expected a value per frame")
    if not _is_list(col.type):
        return col.to_numpy(zero_copy_only=False).reshape(n, 1)
    widths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if n and (widths != widths[0]).any():
        raise LeRobotFormatError(f"{path}: column {name!r} has rows of different widths "
                                 f"{sorted(set(widths.tolist()))[:5]}; expected one width")
    return col.flatten().to_numpy(zero_copy_only=False).reshape(n, int(widths[0]) if n else 0)


def _splits(info: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for name, spec in (info.get("splits") or {}).items():
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
        if m:
            out.append((str(name), int(m.group(1)), int(m.group(2))))
    return out


def _split_of(splits: list[tuple[str, int, int]], episode: int) -> str:
    return next((name for name, lo, hi in splits if lo <= episode < hi), "train")


# --------------------------------------------------------------------------------------------- video


def _frame_time(frame, stream) -> float:
    if frame.pts is not None:
        return float(frame.pts * (frame.time_base or stream.time_base))
    return float(frame.time)


class _VideoFile:
    """One MP4 read forward with frame timestamps; it seeks only when a segment starts before its position."""

    def __init__(self, path: Path):
        import av
        from av.video.reformatter import VideoReformatter

        if not path.is_file():
            raise LeRobotFormatError(f"{path}: video file is missing")
        self.path = path
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except Exception as e:  # av.FFmpegError subclasses, IndexError (no video stream)
            raise LeRobotFormatError(f"{path}: cannot be opened as a video ({type(e).__name__}: {e})") from e
        self.stream.thread_type = "AUTO"
        # One reformatter per file keeps swscale's context: VideoFrame.to_ndarray(format=...) builds a new one per
        # frame, ~60x slower at 64x64 (2 ms instead of 33 us per frame), with the same pixels.
        self._rgb = VideoReformatter()
        self._frames = None  # decode iterator; None: seek before reading
        self._pending: tuple[float, Any] | None = None  # a frame read past the previous segment's end
        self._last = -math.inf  # time of the last frame used (not pending)

    def close(self) -> None:
        self.container.close()

    def _seek(self, t: float) -> None:
        self.container.seek(max(0, int(t / self.stream.time_base)), stream=self.stream, backward=True)
        self._frames = self.container.decode(self.stream)
        self._pending, self._last = None, -math.inf

    def _next(self) -> tuple[float, Any] | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except Exception as e:
            raise LeRobotFormatError(f"{self.path}: video data is corrupt ({type(e).__name__}: {e})") from e
        return _frame_time(frame, self.stream), frame

    def segment(self, start: float, n: int, fps: float, what: str) -> np.ndarray:
        """Frames [n, H, W, 3] uint8 RGB at times ``start + k / fps``, k < n (each within half a frame)."""
        tol = 0.5 / fps
        if self._pending is not None:
            passed = self._pending[0] > start + tol  # the next frame to read is already after the start
            far = self._pending[0] < start - 5.0  # cheaper to seek than to decode up to the start
        else:
            passed, far = self._last >= start - tol, self._last < start - 5.0
        if self._frames is None or passed or far:
            self._seek(start - tol)
        out: list[np.ndarray | None] = [None] * n
        got = 0
        while got < n:
            item = self._next()
            if item is None:
                self._frames = None  # end of stream: a later segment seeks again
                break
            t, frame = item
            if t < start - tol:
                self._last = t
                continue
            k = int(round((t - start) * fps))
            if k >= n:
                self._pending = item
                break
            self._last = t
            if out[k] is None:
                got += 1
            out[k] = self._rgb.reformat(frame, format="rgb24").to_ndarray()
        if got < n:
            first = next(k for k in range(n) if out[k] is None)
            raise LeRobotFormatError(
                f"{self.path}: video is shorter than its frame table: {what} needs {n} frames from t={start:.3f} s "
                f"at {fps:g} fps, the video has {got} of them (first missing: frame {first}, "
                f"t={start + first / fps:.3f} s)")
        return np.stack(out)  # type: ignore[arg-type]


def _decode_image(cell: dict[str, Any] | None, root: Path, where: str) -> np.ndarray:
    import io

    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else None
    try:
        if data:
            im = Image.open(io.BytesIO(data))
        elif isinstance(cell, dict) and cell.get("path"):
            im = Image.open(root / cell["path"])
        else:
            raise LeRobotFormatError(f"{where}: image cell holds neither bytes nor a path")
        return np.asarray(im.convert("RGB"))
    except LeRobotFormatError:
        raise
    except Exception as e:  # PIL raises several types for broken images
        raise LeRobotFormatError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class LeRobotEpisodeRecord:
    """Where one episode lives. ``length``, ``task`` (its first task) and ``split`` as `ClipDataset` reads them."""

    episode_index: int
    length: int
    task: str
    split: str
    data_file: Path
    video_file: Path | None  # None for image features (stored in the frame table)
    from_timestamp: float = 0.0


class LeRobotEpisodes(Sequence[dict]):
    """The episodes of a local LeRobot dataset as the library's episode dicts (see `foresight.data.episodes`).

    Args:
        root: dataset folder (holding meta/info.json).
        camera: camera feature key ('observation.images.top' or just 'top'); default: the first camera feature.
        image_size: resize frames to image_size x image_size (None: keep the stored size).
        action_dim: zero-pad / cut actions to this width (None: keep the stored width).
        split: keep the episodes of this split of ``info['splits']`` ('train', 'test', ...; None: all).
        tasks: keep the episodes whose task is one of these strings (None: all).
        episodes: keep these episode indices (None: all).
        action_key, state_key: frame-table columns of actions and states (state_key None or missing: no states).

    ``ds[i]`` = ``{frames uint8 [T, H, W, 3], actions float32 [T-1, A], states float32 [T, S], task, split,
    episode_index}``. Construction reads the meta files and the numeric columns of every frame table (actions,
    states, indices), checking them; pixels are decoded by ``ds[i]``. Read ``ds[i]`` in order for speed: a v3.0
    video file is then decoded once, forward.
    """

    def __init__(self, root: str | os.PathLike, *, camera: str | None = None, image_size: int | None = None,
                 action_dim: int | None = None, split: str | None = None, tasks: Iterable[str] | None = None,
                 episodes: Iterable[int] | None = None, action_key: str = "action",
                 state_key: str | None = "observation.state"):
        self.root = Path(root).expanduser()
        self.info = read_info(self.root)
        info_path = self.root / INFO
        self.version = self.info["codebase_version"]
        self.fps = float(self.info["fps"])
        features = self.info["features"]
        self.camera = _resolve_camera(self.info, camera, info_path)
        self.camera_dtype = features[self.camera]["dtype"]
        if action_key not in features:
            raise LeRobotFormatError(f"{info_path}: action key {action_key!r} is not a feature of this dataset; "
                                     f"features are {sorted(features)}")
        self.action_key = action_key
        self.state_key = state_key if state_key and state_key in features else None
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        self.image_size, self.action_dim = image_size, action_dim
        if self.camera_dtype == "video" and not isinstance(self.info.get("video_path"), str):
            raise LeRobotFormatError(f"{info_path}: camera {self.camera!r} is a video feature, but 'video_path' is "
                                     f"{self.info.get('video_path')!r}; expected a path template")

        self.records: list[LeRobotEpisodeRecord] = []
        self._actions: list[np.ndarray] = []  # per record: float32 [T-1, A]
        self._states: list[np.ndarray | None] = []  # per record: float32 [T, S]
        self.stored_action_dim: int | None = None  # action width in the frame tables, before padding / cutting
        self._load_frame_tables(split, set(tasks) if tasks is not None else None,
                                {int(e) for e in episodes} if episodes is not None else None)
        self._videos: OrderedDict[Path, _VideoFile] = OrderedDict()
        self._image_table: tuple[Path, Any] | None = None

    def _load_frame_tables(self, split: str | None, keep_tasks: set[str] | None, keep_eps: set[int] | None) -> None:
        """Read and check the numeric columns of every frame table (one read per data file), then select."""
        rows = self._episode_rows()
        task_names = self._task_names()
        split_ranges = _splits(self.info)
        by_file: dict[Path, list[dict[str, Any]]] = {}
        for r in rows:
            by_file.setdefault(r["data_file"], []).append(r)
        for data_file, eps in by_file.items():
            wanted = [r for r in eps if keep_eps is None or r["episode_index"] in keep_eps]
            if not wanted:
                continue
            columns = ["episode_index", "frame_index", self.action_key] + ([self.state_key] if self.state_key else [])
            has_task = "task_index" in _schema_names(data_file)
            table = _read_parquet(data_file, columns + (["task_index"] if has_task else []),
                                  what="frame table (one row per frame)")
            ep_col = _scalars(table, "episode_index").astype(np.int64)
            fr_col = _scalars(table, "frame_index").astype(np.int64)
            act = _vectors(table, self.action_key, data_file).astype(np.float32, copy=False)
            if self.stored_action_dim is not None and act.shape[1] != self.stored_action_dim:
                raise LeRobotFormatError(f"{data_file}: {act.shape[1]}-D {self.action_key!r}, earlier frame tables "
                                         f"have {self.stored_action_dim}-D; expected one width")
            self.stored_action_dim = int(act.shape[1])
            st = _vectors(table, self.state_key, data_file).astype(np.float32, copy=False) if self.state_key else None
            task_col = _scalars(table, "task_index").astype(np.int64) if has_task else None
            for r in wanted:
                e = r["episode_index"]
                sel = np.flatnonzero(ep_col == e)
                sel = sel[np.argsort(fr_col[sel], kind="stable")]
                T = len(sel)
                if T != r["length"] or not np.array_equal(fr_col[sel], np.arange(T)):
                    raise LeRobotFormatError(
                        f"{data_file}: episode {e} has {T} rows with frame_index {_span(fr_col[sel])}; the episode "
                        f"metadata ({r['meta_file']}) says {r['length']} frames, expected frame_index "
                        f"0..{r['length'] - 1}")
                if T < 1:
                    raise LeRobotFormatError(f"{data_file}: episode {e} has no frames")
                if task_col is not None and 0 <= task_col[sel[0]] < len(task_names):
                    task = task_names[int(task_col[sel[0]])]
                else:
                    task = r["tasks"][0] if r["tasks"] else ""
                if keep_tasks is not None and task not in keep_tasks:
                    continue
                s = _split_of(split_ranges, e)
                if split is not None and s != split:
                    continue
                a = act[sel[:-1]]  # [T-1, A]: the action at frame t moves frame t to t+1
                if self.action_dim is not None:
                    a = harmonise_actions(a, target_adim=int(self.action_dim))
                self._actions.append(np.ascontiguousarray(a, dtype=np.float32))
                self._states.append(np.ascontiguousarray(st[sel]) if st is not None else None)
                self.records.append(LeRobotEpisodeRecord(
                    episode_index=e, length=T, task=task, split=s, data_file=data_file,
                    video_file=r.get("video_file"), from_timestamp=float(r.get("from_timestamp", 0.0))))

    # ------------------------------------------------------------------------------------ meta per version

    def _episode_rows(self) -> list[dict[str, Any]]:
        """Per episode: episode_index, length, tasks, data_file, meta_file (+ video_file, from_timestamp)."""
        info, root = self.info, self.root
        video = self.camera_dtype == "video"
        chunks = int(info.get("chunks_size") or 1000)
        out = []
        if self.version.startswith("v2"):
            meta_file = root / "meta" / "episodes.jsonl"
            for row in _read_jsonl(meta_file):
                if "episode_index" not in row or "length" not in row:
                    raise LeRobotFormatError(f"{meta_file}: expected 'episode_index' and 'length' in every line, "
                                             f"got keys {sorted(row)}")
                e = int(row["episode_index"])
                keys = dict(episode_chunk=e // chunks, episode_index=e, video_key=self.camera)
                r = dict(episode_index=e, length=int(row["length"]), tasks=list(row.get("tasks") or []),
                         meta_file=meta_file, data_file=root / info["data_path"].format(**keys))
                if video:
                    r["video_file"] = root / info["video_path"].format(**keys)
                out.append(r)
            return sorted(out, key=lambda r: r["episode_index"])
        files = sorted((root / "meta" / "episodes").glob("**/*.parquet"))
        if not files:
            raise LeRobotFormatError(f"{root / 'meta' / 'episodes'}: no parquet files; expected the v3.0 episode "
                                     f"table meta/episodes/chunk-XXX/file-XXX.parquet")
        cam = f"videos/{self.camera}/"
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        if video:
            need += [cam + "chunk_index", cam + "file_index", cam + "from_timestamp"]
        for meta_file in files:
            names = _schema_names(meta_file)
            table = _read_parquet(meta_file, need + (["tasks"] if "tasks" in names else []),
                                  what="v3.0 episode table")
            cols = {c: table.column(c).to_pylist() for c in table.column_names}
            for i in range(table.num_rows):
                e = int(cols["episode_index"][i])
                r = dict(episode_index=e, length=int(cols["length"][i]), meta_file=meta_file,
                         tasks=list(cols["tasks"][i] or []) if "tasks" in cols else [],
                         data_file=root / info["data_path"].format(
                             chunk_index=int(cols["data/chunk_index"][i]), file_index=int(cols["data/file_index"][i]),
                             episode_index=e, episode_chunk=e // chunks))
                if video:
                    r["video_file"] = root / info["video_path"].format(
                        video_key=self.camera, chunk_index=int(cols[cam + "chunk_index"][i]),
                        file_index=int(cols[cam + "file_index"][i]), episode_index=e, episode_chunk=e // chunks)
                    r["from_timestamp"] = float(cols[cam + "from_timestamp"][i])
                out.append(r)
        return sorted(out, key=lambda r: r["episode_index"])

    def _task_names(self) -> list[str]:
        """Task strings by task_index."""
        if self.version.startswith("v2"):
            path = self.root / "meta" / "tasks.jsonl"
            if not path.is_file():
                return []
            rows = _read_jsonl(path)
            pairs = [(int(r["task_index"]), str(r["task"])) for r in rows if "task_index" in r and "task" in r]
        else:
            path = self.root / "meta" / "tasks.parquet"
            if not path.is_file():
                return []
            table = _read_parquet(path, what="v3.0 task table")
            name = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
            if name is None or "task_index" not in table.column_names:
                raise LeRobotFormatError(f"{path}: expected columns 'task_index' and 'task' (the task string, "
                                         f"pandas' index), got {table.column_names}")
            pairs = list(zip(table.column("task_index").to_pylist(), table.column(name).to_pylist()))
        names = [""] * (max((i for i, _ in pairs), default=-1) + 1)
        for i, t in pairs:
            names[int(i)] = str(t)
        return names

    # ------------------------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.records)

    @property
    def task_names(self) -> list[str]:
        return sorted({r.task for r in self.records})

    @property
    def num_frames(self) -> int:
        return sum(r.length for r in self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        r = self.records[i]
        what = f"episode {r.episode_index} (frame table {r.data_file})"
        if r.video_file is not None:
            frames = self._video(r.video_file).segment(r.from_timestamp, r.length, self.fps, what)
        else:
            frames = self._images(r)
        if self.image_size is not None:
            frames = resize_frames(frames, (self.image_size, self.image_size))
        ep: dict[str, Any] = {"frames": frames, "actions": self._actions[i], "task": r.task, "split": r.split,
                              "episode_index": r.episode_index}
        if self._states[i] is not None:
            ep["states"] = self._states[i]
        return ep

    def _video(self, path: Path) -> _VideoFile:
        if path in self._videos:
            self._videos.move_to_end(path)
            return self._videos[path]
        while len(self._videos) >= 2:
            self._videos.popitem(last=False)[1].close()
        self._videos[path] = _VideoFile(path)
        return self._videos[path]

    def _images(self, r: LeRobotEpisodeRecord) -> np.ndarray:
        if self._image_table is None or self._image_table[0] != r.data_file:
            t = _read_parquet(r.data_file, ["episode_index", "frame_index", self.camera], what="frame table")
            self._image_table = (r.data_file, (_scalars(t, "episode_index"), _scalars(t, "frame_index"),
                                               t.column(self.camera).to_pylist()))
        ep_col, fr_col, cells = self._image_table[1]
        sel = np.flatnonzero(ep_col == r.episode_index)
        sel = sel[np.argsort(fr_col[sel], kind="stable")]
        where = f"{r.data_file} column {self.camera!r} episode {r.episode_index}"
        frames = [_decode_image(cells[j], self.root, where) for j in sel]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise LeRobotFormatError(f"{where}: images of different sizes {sorted(shapes)}")
        return np.stack(frames)

    def close(self) -> None:
        for v in self._videos.values():
            v.close()
        self._videos.clear()
        self._image_table = None

    def __getstate__(self) -> dict[str, Any]:  # open decoders do not pickle (DataLoader workers)
        state = dict(self.__dict__)
        state["_videos"], state["_image_table"] = OrderedDict(), None
        return state


def _schema_names(path: Path) -> list[str]:
    return _read_parquet_schema(path).names


def _read_parquet_schema(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing; expected a parquet table")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise LeRobotFormatError(f"{path}: cannot be read as parquet (truncated or not a parquet file: {e})") from e


def _span(a: np.ndarray) -> str:
    return f"{int(a.min())}..{int(a.max())}" if len(a) else "(none)"


def lerobot_clips(root: str | os.PathLike, *, context: int = 1, future: int = 11, camera: str | None = None,
                  image_size: int | None = None, action_dim: int | None = None, split: str | None = None,
                  tasks: Iterable[str] | None = None, episodes: Iterable[int] | None = None,
                  **clip_kwargs: Any) -> ClipDataset:
    """A `ClipDataset` over a LeRobot folder: the same windows, batch dict, dtypes and ``get_batch`` as over the
    library's own episode store. ``clip_kwargs``: `ClipDataset`'s (stride, window_step, augment_shift,
    action_reduce, task_names, seed, with_states, frames_dtype). Raises ValueError when ``split`` / ``tasks``
    select no episode."""
    eps = LeRobotEpisodes(root, camera=camera, image_size=image_size, action_dim=action_dim, split=split,
                          tasks=tasks, episodes=episodes)
    if len(eps) == 0:
        raise ValueError(f"{root}: no episodes selected (split={split!r}, tasks={tasks!r})")
    try:
        return ClipDataset(eps, context=context, future=future, **clip_kwargs)
    finally:
        eps.close()
