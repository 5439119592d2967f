"""RoboNet HDF5 trajectory files: reader and writer for the layout as published.

One file holds one trajectory. The layout (as written by RoboNet's own conversion tools and read by its
public loader) is::

    /file_version                 scalar string, '0.1.0'
    /env                          group, attrs: n_cams (int), cam_encoding ('mp4' | 'jpeg'; 'jpg' also seen)
    /env/cam{i}_video/frames      1-D uint8: the bytes of an MP4 file (H.264); attrs shape=(H, W, 3), T,
                                  image_format ('RGB' | 'BGR')                          [mp4 encoding]
    /env/cam{i}_video/frame{t}    1-D uint8: the bytes of one JPEG; attrs shape, image_format   [jpeg encoding]
    /env/state                    [T, sdim]   end-effector state, gripper last
    /env/qpos, /env/qvel          joint positions / velocities (optional here, present in most files)
    /env/high_bound, /low_bound   [T, D] workspace bounds (row 0 is what loaders use)
    /policy/actions               [T - 1, adim]
    /misc                         group of extra datasets (may be empty); loaders merge them into metadata
    /metadata                     group whose attrs hold the trajectory's metadata (robot, primitives, ...)

Axis legend: T time, C cameras, H height, W width, A action dim, S state dim.

Colour channels. MP4 streams are written from RGB arrays and tagged 'RGB'. For JPEG frames the public loader
decodes with OpenCV, whose arrays are BGR, and flips only when the tag is 'BGR'; so the tag names the channel
order of an OpenCV-decoded array. We decode JPEG with PIL (true RGB) and reproduce that rule: tag 'BGR' ->
keep PIL's RGB, tag 'RGB' -> reverse channels. Our writer stores correctly coloured JPEGs tagged 'BGR' (what
RoboNet's mp4 -> jpg converter writes), so both this reader and the public loader read them back as RGB.

The BytesIO trap: ``imageio.get_reader(io.BytesIO(mp4_bytes), format='mp4')`` (what the public loader does)
fails with current imageio. MP4 bytes here go through a temporary file and the ffmpeg binary that ships with
imageio-ffmpeg; the MP4 atom layout needs a seekable input, so piping the bytes to ffmpeg's stdin is no fix.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from foresight.checkpoint import atomic_path

FILE_VERSION = "0.1.0"
ENCODINGS = ("mp4", "jpeg")
# Keys RoboNet's converter refuses to write a file without (plus contains_annotation, always written).
MANDATORY_METADATA = (
    "camera_configuration", "policy_desc", "bin_type", "bin_insert", "robot", "gripper", "background",
    "action_space", "object_classes", "primitives", "camera_type",
)


class RoboNetFileError(ValueError):
    """A RoboNet file that cannot be read: truncated, corrupt, or not in the published layout."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"RoboNet file {self.path}: {reason}")


# ----------------------------------------------------------------------------------------------------------
# small helpers


def _to_python(value: Any) -> Any:
    """HDF5 attribute/dataset values -> JSON-friendly Python (bytes -> str, numpy -> list/scalars)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in ("O", "S", "U"):
            return [_to_python(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return _to_python(value.item())
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (RoboNet's metadata uses the same hash to detect stale entries)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tmp_dir() -> str | None:
    # /dev/shm keeps the MP4 temp files in memory where it exists.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _have_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


MP4_BACKENDS = ("auto", "pyav", "ffmpeg")


def decode_mp4(data: bytes | np.ndarray, *, max_frames: int | None = None,
               size: tuple[int, int] | None = None, backend: str = "auto") -> np.ndarray:
    """Decode MP4 bytes to uint8 frames [T, H, W, 3] (channel order as encoded).

    Backends: 'pyav' decodes in-process from memory (PyAV's container accepts a seekable file object, unlike
    imageio's mp4 reader); 'ffmpeg' writes a temporary file and runs the ffmpeg binary of imageio-ffmpeg (no
    extra dependency; a process start per call makes it 2-4x slower); 'auto' = 'pyav' when importable.
    Both give identical pixels. ``max_frames`` stops the decoder early, which makes reading a 12-frame clip
    from a long video cheap. ``size`` = (H, W) is the frame size the file's ``shape`` attribute promises;
    when given, frames are scaled to it (a no-op for files written at that size).
    """
    if backend not in MP4_BACKENDS:
        raise ValueError(f"backend: expected one of {MP4_BACKENDS}, got {backend!r}")
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if backend == "pyav" or (backend == "auto" and _have_pyav()):
        frames = _decode_mp4_pyav(buf, max_frames)
        return resize_frames(frames, size) if size is not None else frames
    return _decode_mp4_ffmpeg(buf, max_frames, size)


def _decode_mp4_pyav(buf: bytes, max_frames: int | None) -> np.ndarray:
    import av

    out = []
    try:
        with av.open(io.BytesIO(buf), mode="r", format="mp4") as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                out.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(out) >= max_frames:
                    break
    except Exception as e:  # PyAV raises FFmpegError subclasses, IndexError (no stream), ValueError ...
        raise ValueError(f"cannot decode MP4 stream (PyAV {type(e).__name__}: {e})") from e
    if not out:
        raise ValueError("MP4 stream holds no decodable frames")
    return np.stack(out)  # [T, H, W, 3]


def _decode_mp4_ffmpeg(buf: bytes, max_frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
    import imageio_ffmpeg

    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=_tmp_dir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "info", "-i", tmp]
        if max_frames is not None:
            cmd += ["-frames:v", str(int(max_frames))]
        if size is not None:
            cmd += ["-vf", f"scale={int(size[1])}:{int(size[0])}"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        proc = subprocess.run(cmd, capture_output=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise ValueError(f"cannot decode MP4 stream (ffmpeg exit {proc.returncode}: {log.strip()[-300:]})")
    if size is None:
        # ffmpeg logs the output stream last: "Stream #0:0: Video: rawvideo (RGB[24] ...), rgb24, 64x48, ..."
        found = re.findall(r"Video: .*?, (\d+)x(\d+)", log)
        if not found:
            raise ValueError("cannot decode MP4 stream (no video stream found)")
        w, h = (int(v) for v in found[-1])
    else:
        h, w = int(size[0]), int(size[1])
    n = len(proc.stdout) // (h * w * 3)
    if n == 0:
        raise ValueError(f"MP4 stream holds no decodable frames ({log.strip()[-200:]})")
    return np.frombuffer(proc.stdout, dtype=np.uint8, count=n * h * w * 3).reshape(n, h, w, 3)


def encode_mp4(frames: np.ndarray, *, fps: int = 10, quality: float = 8.0) -> np.ndarray:
    """Encode uint8 frames [T, H, W, 3] (RGB) as H.264/yuv420p MP4 bytes -> 1-D uint8 array.

    H and W must be even (yuv420p subsamples chroma by 2); frames are stored at their own size, never rescaled.
    """
    import imageio_ffmpeg

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"MP4 (yuv420p) needs even frame height and width, got {h}x{w}")
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=_tmp_dir())
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, quality=quality, macro_block_size=2,
                                             ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(tmp, "rb") as f:
            buf = f.read()
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return np.frombuffer(buf, dtype=np.uint8)


def decode_jpeg(data: bytes | np.ndarray, *, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one JPEG to uint8 RGB [H, W, 3].

    ``min_size`` = (h, w) lets the decoder shrink by 2, 4 or 8 in the DCT domain while staying at least that
    large (libjpeg's scaled decoding, an average over 2x2 .. 8x8 blocks): several times faster when frames
    are resized far down afterwards, e.g. 240x320 -> 64x64.
    """
    from PIL import Image

    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        with Image.open(io.BytesIO(buf)) as im:
            if min_size is not None:
                im.draft("RGB", (int(min_size[1]), int(min_size[0])))
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for broken streams
        raise ValueError(f"cannot decode JPEG ({type(e).__name__}: {e})") from e


def encode_jpeg(frame: np.ndarray, *, quality: int = 95) -> np.ndarray:
    """Encode one uint8 RGB frame [H, W, 3] as JPEG bytes -> 1-D uint8 array."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame, mode="RGB").save(out, format="JPEG", quality=quality)
    return np.frombuffer(out.getvalue(), dtype=np.uint8)


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 [T, H, W, 3] to ``size`` = (height, width).

    Area averaging when shrinking and bicubic when enlarging, the same choice as RoboNet's loader (OpenCV
    INTER_AREA / INTER_CUBIC), done with PIL so OpenCV is not a dependency.
    """
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    from PIL import Image

    h, w = size
    shrink = h * w < frames.shape[1] * frames.shape[2]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), method)) for f in frames])


# ----------------------------------------------------------------------------------------------------------
# metadata of one file (no pixel decoding)


def read_file_metadata(path: str | os.PathLike, *, with_hash: bool = True) -> dict[str, Any]:
    """The metadata of one file, as RoboNet's metadata table has it, in JSON-friendly types.

    Keys: file_version, sdim, state_T, adim, action_T, ncam, img_encoding ('mp4' | 'jpeg'), frame_dim [H, W],
    img_T, image_format, low_bound, high_bound, steps = min(state_T, img_T, action_T + 1), every /misc dataset
    and every /metadata attribute (robot, primitives, action_space, camera_configuration, ...), and sha256.
    Raises `RoboNetFileError` naming the file when it cannot be opened or misses part of the layout.
    """
    path = str(path)
    try:
        with h5py.File(path, "r") as hf:
            meta = _metadata_from_open_file(hf)
    except RoboNetFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise RoboNetFileError(path, f"not a readable RoboNet HDF5 file ({type(e).__name__}: {e})") from e
    if with_hash:
        meta["sha256"] = sha256_file(path)
    return meta


def _metadata_from_open_file(hf: h5py.File) -> dict[str, Any]:
    for key in ("env", "policy", "metadata"):
        if key not in hf:
            raise KeyError(f"missing group /{key}")
    env = hf["env"]
    meta: dict[str, Any] = {"file_version": _to_python(hf["file_version"][()]) if "file_version" in hf else None}
    state, actions = env["state"], hf["policy"]["actions"]
    meta["state_T"], meta["sdim"] = int(state.shape[0]), int(state.shape[1])
    meta["action_T"], meta["adim"] = int(actions.shape[0]), int(actions.shape[1])

    n_cams = int(env.attrs.get("n_cams", 0))
    meta["ncam"] = n_cams
    if n_cams:
        encoding = _to_python(env.attrs["cam_encoding"])
        cam0 = env["cam0_video"]
        if encoding == "mp4":
            frames = cam0["frames"]
            meta["img_encoding"] = "mp4"
            meta["frame_dim"] = [int(v) for v in frames.attrs["shape"][:2]]
            meta["img_T"] = int(frames.attrs["T"])
            meta["image_format"] = _to_python(frames.attrs.get("image_format", "RGB"))
        elif encoding in ("jpeg", "jpg"):
            frame0 = cam0["frame0"]
            meta["img_encoding"] = "jpeg"
            meta["frame_dim"] = [int(v) for v in frame0.attrs["shape"][:2]]
            meta["img_T"] = sum(1 for k in cam0.keys() if k.startswith("frame"))
            meta["image_format"] = _to_python(frame0.attrs.get("image_format", "RGB"))
        else:
            raise KeyError(f"unknown cam_encoding {encoding!r}")
    else:
        meta.update(img_encoding=None, frame_dim=None, img_T=0, image_format=None)

    if "misc" in hf:
        for k in hf["misc"].keys():
            meta.setdefault(k, _to_python(hf["misc"][k][()]))
    for k, v in hf["metadata"].attrs.items():
        meta.setdefault(k, _to_python(v))
    # Bounds: a metadata attribute wins, else row 0 of the env dataset (what RoboNet's loader does).
    for k in ("low_bound", "high_bound"):
        if k not in meta and k in env:
            meta[k] = _to_python(np.asarray(env[k][0] if env[k].ndim > 1 else env[k][()], dtype=np.float64))
    meta["steps"] = min(meta["state_T"], meta["img_T"], meta["action_T"] + 1)
    return meta


# ----------------------------------------------------------------------------------------------------------
# reading a trajectory


@dataclass
class RoboNetTrajectory:
    """One trajectory as read from a file, raw (not harmonised). ``T`` = steps used (see `read_trajectory`).

    images: uint8 [T, C, H, W, 3] RGB; states: float32 [T, S]; actions: float32 [T - 1, A] (action t moves
    frame t to frame t + 1); metadata: the file's metadata dict (`read_file_metadata`) plus 'start' and 'path'.
    """

    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    qpos: np.ndarray | None = None
    qvel: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return int(self.images.shape[0])


def _read_camera(hf: h5py.File, cam: int, meta: dict[str, Any], start: int, n: int,
                 min_size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB [n, H', W', 3] of camera ``cam``, frames start .. start + n - 1. JPEG frames may come out
    smaller than stored (but >= ``min_size``) through scaled decoding."""
    group = hf["env"][f"cam{cam}_video"]
    if meta["img_encoding"] == "mp4":
        ds = group["frames"]
        fmt = _to_python(ds.attrs.get("image_format", "RGB"))
        shape = ds.attrs.get("shape")
        size = (int(shape[0]), int(shape[1])) if shape is not None else None
        frames = decode_mp4(ds[()], max_frames=start + n, size=size)[start:start + n]
        if frames.shape[0] < n:
            raise ValueError(f"camera {cam}: MP4 holds {frames.shape[0] + start} frames, expected >= {start + n}")
        return frames[..., ::-1] if fmt == "BGR" else frames
    out = []
    for t in range(start, start + n):
        ds = group[f"frame{t}"]
        fmt = _to_python(ds.attrs.get("image_format", "RGB"))
        rgb = decode_jpeg(ds[()], min_size=min_size)
        # 'RGB' tag: OpenCV's (BGR-ordered) decode is the intended array -> reversed PIL output.
        out.append(rgb[..., ::-1] if fmt == "RGB" else rgb)
    return np.stack(out)


def read_trajectory(
    path: str | os.PathLike,
    *,
    cameras: Sequence[int] | None = (0,),
    image_size: tuple[int, int] | None = None,
    start: int = 0,
    num_steps: int | None = None,
    metadata: dict[str, Any] | None = None,
    verify_hash: bool = False,
) -> RoboNetTrajectory:
    """Read a trajectory file.

    The usable length is ``steps = min(state T, image T, action T + 1)``; ``start`` / ``num_steps`` select a
    window inside it (``num_steps=None``: to the end). ``cameras=None`` reads all cameras. ``image_size`` =
    (height, width) resizes frames (None keeps the stored size). ``metadata`` skips re-reading the header
    when an index already has it; ``verify_hash`` checks the file against metadata['sha256'].
    Raises `RoboNetFileError` naming the file on any corrupt, truncated or inconsistent content.
    """
    path = str(path)
    try:
        if verify_hash:
            if metadata is None or "sha256" not in metadata:
                raise ValueError("verify_hash needs metadata with a 'sha256' entry")
            if sha256_file(path) != metadata["sha256"]:
                raise ValueError("file hash differs from the index (file changed; rebuild the index)")
        with h5py.File(path, "r") as hf:
            meta = dict(metadata) if metadata is not None else _metadata_from_open_file(hf)
            steps = int(meta["steps"])
            if meta["ncam"] < 1:
                raise ValueError("file has no camera streams")
            if num_steps is None:
                num_steps = steps - start
            if start < 0 or num_steps < 1 or start + num_steps > steps:
                raise ValueError(f"window start={start}, num_steps={num_steps} outside the {steps} usable steps")
            cams = list(range(meta["ncam"])) if cameras is None else [int(c) for c in cameras]
            for c in cams:
                if not 0 <= c < meta["ncam"]:
                    raise ValueError(f"camera {c} out of range, file has {meta['ncam']} cameras")
            per_cam = [resize_frames(_read_camera(hf, c, meta, start, num_steps, image_size), image_size)
                       for c in cams]
            images = np.stack(per_cam, axis=1)  # C x [T, H, W, 3] -> [T, C, H, W, 3]
            window = slice(start, start + num_steps)
            states = np.asarray(hf["env"]["state"][window], dtype=np.float32)  # [T, S]
            actions = np.asarray(hf["policy"]["actions"][start:start + num_steps - 1], dtype=np.float32)
            qpos = np.asarray(hf["env"]["qpos"][window], dtype=np.float32) if "qpos" in hf["env"] else None
            qvel = np.asarray(hf["env"]["qvel"][window], dtype=np.float32) if "qvel" in hf["env"] else None
    except RoboNetFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise RoboNetFileError(path, f"{type(e).__name__}: {e}") from e
    meta.update(start=start, path=path)
    return RoboNetTrajectory(images=images, states=states, actions=actions, metadata=meta, qpos=qpos, qvel=qvel)


# ----------------------------------------------------------------------------------------------------------
# writing


def default_metadata(**overrides: Any) -> dict[str, Any]:
    """A metadata dict with every key RoboNet's converter requires; override what you know."""
    meta: dict[str, Any] = {
        "camera_configuration": "custom", "policy_desc": "random", "bin_type": "none", "bin_insert": "none",
        "robot": "custom", "gripper": "default", "background": "lab", "action_space": "x,y,z,theta",
        "object_classes": ["toys"], "primitives": "none", "camera_type": "RGB", "contains_annotation": False,
    }
    meta.update(overrides)
    return meta


def _attr_value(v: Any) -> Any:
    """Lists of strings (object_classes) must become variable-length string arrays for HDF5."""
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return np.array(v, dtype=h5py.string_dtype())
    return v


def _as_bounds(b: np.ndarray | Sequence[float], t: int) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    return np.repeat(b[None], t, axis=0) if b.ndim == 1 else b  # [D] -> [T, D], as the recorder stores them


def write_trajectory(
    path: str | os.PathLike,
    *,
    images: np.ndarray,
    states: np.ndarray,
    actions: np.ndarray,
    metadata: dict[str, Any],
    encoding: str = "mp4",
    qpos: np.ndarray | None = None,
    qvel: np.ndarray | None = None,
    low_bound: np.ndarray | Sequence[float] | None = None,
    high_bound: np.ndarray | Sequence[float] | None = None,
    misc: dict[str, Any] | None = None,
    fps: int = 10,
    mp4_quality: float = 8.0,
    jpeg_quality: int = 95,
) -> Path:
    """Write one trajectory in RoboNet's published layout (atomically: temp file + fsync + rename).

    images: uint8 [T, C, H, W, 3] RGB (C cameras, all the same size); states [T, S]; actions [T - 1, A];
    metadata must hold `MANDATORY_METADATA` (`default_metadata` fills the rest); bounds are [D] or [T, D].
    ``encoding`` 'mp4' stores one H.264 stream per camera, 'jpeg' one JPEG per frame.
    """
    path = Path(path)
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 [T, C, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    t, n_cams = images.shape[:2]
    states, actions = np.asarray(states), np.asarray(actions)
    if states.ndim != 2 or states.shape[0] != t:
        raise ValueError(f"states: expected [{t}, S], got {tuple(states.shape)}")
    if actions.ndim != 2 or actions.shape[0] != t - 1:
        raise ValueError(f"actions: expected [{t - 1}, A], got {tuple(actions.shape)}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")
    missing = [k for k in MANDATORY_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"metadata misses required keys {missing} (see default_metadata)")

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("file_version", data=FILE_VERSION)
            env = f.create_group("env")
            env.attrs["n_cams"] = n_cams
            env.attrs["cam_encoding"] = encoding
            for c in range(n_cams):
                cam = env.create_group(f"cam{c}_video")
                if encoding == "mp4":
                    ds = cam.create_dataset("frames", data=encode_mp4(images[:, c], fps=fps, quality=mp4_quality))
                    ds.attrs["shape"] = images.shape[2:]
                    ds.attrs["T"] = t
                    ds.attrs["image_format"] = "RGB"
                else:
                    for i in range(t):
                        ds = cam.create_dataset(f"frame{i}", data=encode_jpeg(images[i, c], quality=jpeg_quality))
                        ds.attrs["shape"] = images.shape[2:]
                        # correctly coloured JPEG; 'BGR' = what an OpenCV decode yields (see module docstring)
                        ds.attrs["image_format"] = "BGR"
            env.create_dataset("state", data=states)
            for name, arr in (("qpos", qpos), ("qvel", qvel)):
                if arr is not None:
                    env.create_dataset(name, data=np.asarray(arr))
            for name, b in (("high_bound", high_bound), ("low_bound", low_bound)):
                if b is not None:
                    env.create_dataset(name, data=_as_bounds(b, t))
            misc_group = f.create_group("misc")
            for k, v in (misc or {}).items():
                misc_group.create_dataset(k, data=v)
            f.create_group("policy").create_dataset("actions", data=actions)
            meta_group = f.create_group("metadata")
            for k, v in metadata.items():
                meta_group.attrs[k] = _attr_value(v)
    return path
