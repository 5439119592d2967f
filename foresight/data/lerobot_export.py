"""Export episodes (the library's episode store, or episode dicts) as a LeRobot v3.0 dataset: parquet frame tables,
MP4 camera streams (several episodes per file) and the meta files, written atomically. The layout is the one
`foresight.data.lerobot` reads (see its docstring).

    from foresight.data.lerobot_export import write_lerobot
    write_lerobot("data/metaworld_64", "data/metaworld_64_lerobot")   # episode store -> LeRobot v3.0
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from foresight.checkpoint import atomic_directory
from foresight.data.lerobot import INFO, V30_DATA_PATH, V30_EPISODES_PATH, V30_VIDEO_PATH

__all__ = ["write_lerobot"]



@dataclass
class _Rotation:
    """chunk/file indices of one stream of files (LeRobot v3.0: at most ``chunks_size`` files per chunk)."""

    chunks_size: int
    chunk: int = 0
    file: int = 0

    def advance(self) -> None:
        self.file += 1
        if self.file >= self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


class _VideoWriter:
    def __init__(self, path: Path, *, fps: int, width: int, height: int, codec: str, pix_fmt: str,
                 options: dict[str, str]):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream(codec, rate=fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.frames, self.nbytes = 0, 0

    def write(self, frames: np.ndarray) -> None:
        import av

        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.frames
            self.frames += 1
            self._mux(self.stream.encode(vf))

    def _mux(self, packets) -> None:
        for p in packets:
            self.nbytes += p.size
            self.container.mux(p)

    def close(self) -> None:
        self._mux(self.stream.encode(None))
        self.container.close()


def _pandas_index_metadata(index: str, columns: Sequence[tuple[str, str]]) -> bytes:
    """The schema metadata with which pandas (and so LeRobot's ``pd.read_parquet``) reads column ``index`` back as
    the table's index, written without needing pandas here."""
    cols = [{"name": n, "field_name": n, "pandas_type": pt, "numpy_type": "object" if pt == "unicode" else pt,
             "metadata": None} for n, pt in columns]
    return json.dumps({"index_columns": [index], "column_indexes": [{
        "name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
        "metadata": {"encoding": "UTF-8"}}], "columns": cols, "creator": {"library": "pyarrow"},
        "pandas_version": "2.2.0"}).encode()


def _stats(x: np.ndarray) -> dict[str, list]:
    x = np.asarray(x, dtype=np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(len(x))]}


def write_lerobot(src: str | os.PathLike | Sequence[dict], out: str | os.PathLike, *, fps: int = 10,
                  camera_key: str = "observation.images.image", lossless: bool = False, crf: int = 18,
                  gop: int = 2, robot_type: str | None = None, data_file_size_mb: float = 100.0,
                  video_file_size_mb: float = 200.0, chunks_size: int = 1000, overwrite: bool = False) -> Path:
    """Write episodes as a LeRobot v3.0 dataset folder (parquet + MP4 + meta files); returns ``out``.

    ``src``: an episode store folder (`foresight.data.episodes`, e.g. written by experiments/collect_metaworld.py)
    or a sequence of episode dicts (frames uint8 [T, H, W, 3] with even H and W, actions [T-1, A], optional
    states [T, S] and rewards [T-1], 'task', 'split'). Train episodes come first, so ``info['splits']`` is
    ``{"train": "0:n", "test": "n:N"}``. Frame tables hold ``action`` (the last frame of an episode gets a zero
    action: LeRobot keeps one per frame), ``observation.state``, ``next.reward`` (when the episodes have rewards),
    ``next.done``, ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``; other arrays
    (success, sim_states) and the variation number are not exported. Video: H.264 (libx264, yuv420p, ``crf``,
    keyframe every ``gop`` frames like LeRobot's encoder), or with ``lossless`` libx264rgb at crf 0 (bit-exact
    pixels, ~4x larger on Meta-World frames). Episodes are packed into files of up to ``data_file_size_mb`` / ``video_file_size_mb``.
    The folder appears whole or not at all (`atomic_directory`); an existing ``out`` needs ``overwrite``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if isinstance(src, (str, os.PathLike)):
        from foresight.data.episodes import EpisodeDataset

        src = EpisodeDataset(src)
    episodes = src
    order = sorted(range(len(episodes)), key=lambda i: _episode_split(episodes, i) != "train")
    if not order:
        raise ValueError("write_lerobot: no episodes to write")
    codec, pix_fmt = ("libx264rgb", "rgb24") if lossless else ("libx264", "yuv420p")
    options = {"crf": str(0 if lossless else int(crf)), "g": str(int(gop))}

    with atomic_directory(out) as tmp:
        tasks: dict[str, int] = {}
        ep_rows: list[dict[str, Any]] = []
        split_counts: dict[str, int] = {}
        data_rot, video_rot = _Rotation(chunks_size), _Rotation(chunks_size)
        pending: list[Any] = []
        pending_bytes = 0
        video: _VideoWriter | None = None
        shape = action_dim = state_dim = None
        has_rewards = False
        acc: dict[str, list[np.ndarray]] = {"action": [], "observation.state": []}
        pix_sum = np.zeros(3)
        pix_sq = np.zeros(3)
        pix_min, pix_max = np.full(3, 255.0), np.zeros(3)
        index = 0

        def flush_data() -> None:
            nonlocal pending, pending_bytes
            if pending:
                path = tmp / V30_DATA_PATH.format(chunk_index=data_rot.chunk, file_index=data_rot.file)
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.concat_tables(pending), path)
                data_rot.advance()
                pending, pending_bytes = [], 0

        for n, i in enumerate(order):
            ep = episodes[i]
            frames = np.asarray(ep["frames"])
            T = len(frames)
            if shape is None:
                shape = frames.shape[1:]
                action_dim = int(np.shape(ep["actions"])[1])
                state_dim = int(np.shape(ep["states"])[1]) if "states" in ep else None
                has_rewards = "rewards" in ep
                if frames.dtype != np.uint8 or len(shape) != 3 or shape[2] != 3 or (not lossless and (
                        shape[0] % 2 or shape[1] % 2)):
                    raise ValueError(f"write_lerobot: frames must be uint8 [T, H, W, 3] with even H and W (yuv420p), "
                                     f"got {frames.dtype} {list(frames.shape)}")
            if frames.shape[1:] != shape:
                raise ValueError(f"write_lerobot: episode {n} has frames {list(frames.shape)}, the first episode "
                                 f"[T, {shape[0]}, {shape[1]}, 3]")
            task = str(ep.get("task", ""))
            task_index = tasks.setdefault(task, len(tasks))
            split = _episode_split(episodes, i)
            split_counts[split] = split_counts.get(split, 0) + 1
            actions = np.zeros((T, action_dim), np.float32)
            actions[:T - 1] = np.asarray(ep["actions"], dtype=np.float32)
            cols: dict[str, Any] = {"action": pa.FixedSizeListArray.from_arrays(pa.array(actions.ravel()), action_dim)}
            acc["action"].append(actions)
            if state_dim is not None:
                states = np.asarray(ep["states"], dtype=np.float32)
                cols["observation.state"] = pa.FixedSizeListArray.from_arrays(pa.array(states.ravel()), state_dim)
                acc["observation.state"].append(states)
            if has_rewards:
                rewards = np.zeros(T, np.float32)
                rewards[:T - 1] = np.asarray(ep["rewards"], dtype=np.float32)
                cols["next.reward"] = pa.array(rewards)
            done = np.zeros(T, bool)
            done[-1] = True
            frame_index = np.arange(T, dtype=np.int64)
            cols.update({"next.done": pa.array(done), "timestamp": pa.array((frame_index / fps).astype(np.float32)),
                         "frame_index": pa.array(frame_index), "episode_index": pa.array(np.full(T, n, np.int64)),
                         "index": pa.array(np.arange(index, index + T, dtype=np.int64)),
                         "task_index": pa.array(np.full(T, task_index, np.int64))})
            table = pa.table(cols)
            row = {"episode_index": n, "tasks": [task], "length": T, "data/chunk_index": data_rot.chunk,
                   "data/file_index": data_rot.file, "dataset_from_index": index, "dataset_to_index": index + T}
            pending.append(table)
            pending_bytes += table.nbytes
            if video is None:
                video = _VideoWriter(tmp / V30_VIDEO_PATH.format(video_key=camera_key, chunk_index=video_rot.chunk,
                                                                 file_index=video_rot.file),
                                     fps=fps, width=shape[1], height=shape[0], codec=codec, pix_fmt=pix_fmt,
                                     options=options)
            start = video.frames
            video.write(frames)
            row.update({f"videos/{camera_key}/chunk_index": video_rot.chunk,
                        f"videos/{camera_key}/file_index": video_rot.file,
                        f"videos/{camera_key}/from_timestamp": start / fps,
                        f"videos/{camera_key}/to_timestamp": (start + T) / fps})
            ep_rows.append(row)
            px = frames.reshape(-1, 3).astype(np.float64) / 255.0
            pix_sum += px.sum(0)
            pix_sq += (px ** 2).sum(0)
            pix_min, pix_max = np.minimum(pix_min, px.min(0)), np.maximum(pix_max, px.max(0))
            index += T
            if pending_bytes >= data_file_size_mb * 2 ** 20:
                flush_data()
            if video.nbytes >= video_file_size_mb * 2 ** 20:
                video.close()
                video = None
                video_rot.advance()
        flush_data()
        if video is not None:
            video.close()

        for r in ep_rows:
            r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = 0, 0
        ep_path = tmp / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        ep_table = pa.table({k: [r[k] for r in ep_rows] for k in ep_rows[0]})
        pq.write_table(ep_table, ep_path)
        task_list = sorted(tasks, key=tasks.get)
        task_table = pa.table({"task_index": pa.array(range(len(task_list)), pa.int64()),
                               "task": pa.array(task_list, pa.string())})
        task_table = task_table.replace_schema_metadata(
            {b"pandas": _pandas_index_metadata("task", [("task_index", "int64"), ("task", "unicode")])})
        pq.write_table(task_table, tmp / "meta" / "tasks.parquet")

        H, W = int(shape[0]), int(shape[1])
        vec = lambda dim: {"dtype": "float32", "shape": [dim], "names": None}  # noqa: E731
        scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
        features: dict[str, Any] = {
            camera_key: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                         "info": {"video.height": H, "video.width": W, "video.codec": "h264",
                                  "video.pix_fmt": "gbrp" if lossless else pix_fmt, "video.is_depth_map": False,
                                  "video.fps": fps, "video.channels": 3, "has_audio": False}},
            "action": vec(action_dim)}
        if state_dim is not None:
            features["observation.state"] = vec(state_dim)
        if has_rewards:
            features["next.reward"] = scalar("float32")
        features.update({"next.done": scalar("bool"), "timestamp": scalar("float32"), "frame_index": scalar("int64"),
                         "episode_index": scalar("int64"), "index": scalar("int64"), "task_index": scalar("int64")})
        splits, lo = {}, 0
        for name in sorted(split_counts, key=lambda s: s != "train"):
            splits[name] = f"{lo}:{lo + split_counts[name]}"
            lo += split_counts[name]
        info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(ep_rows),
                "total_frames": index, "total_tasks": len(task_list), "chunks_size": chunks_size,
                "data_files_size_in_mb": data_file_size_mb, "video_files_size_in_mb": video_file_size_mb,
                "fps": fps, "splits": splits, "data_path": V30_DATA_PATH, "video_path": V30_VIDEO_PATH,
                "features": features}
        (tmp / INFO).write_text(json.dumps(info, indent=4) + "\n")
        count = max(index, 1)
        mean = pix_sum / count
        std = np.sqrt(np.maximum(pix_sq / count - mean ** 2, 0.0))
        stats = {camera_key: {k: [[[float(v)]] for v in vals] for k, vals in
                              (("min", pix_min), ("max", pix_max), ("mean", mean), ("std", std))}}
        stats[camera_key]["count"] = [index]
        for key, arrays in acc.items():
            if arrays:
                stats[key] = _stats(np.concatenate(arrays))
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4) + "\n")
    return out


def _episode_split(episodes: Any, i: int) -> str:
    records = getattr(episodes, "records", None)
    if records is not None:
        return str(records[i].split)
    return str(episodes[i].get("split", "train"))
