"""RoboNet: real multi-robot trajectories as clips for world models, planners and replay.

Public entry point of the RoboNet support (the file format lives in `robonet_io`, the metadata index and the
split lists in `robonet_index`; everything is re-exported here)::

    from foresight.data import robonet
    index = robonet.RoboNetIndex.build("~/robonet/hdf5")                     # cached metadata of every file
    train = robonet.RoboNetClipDataset(index.filter(robot="sawyer", min_steps=12), random_start=True, seed=0)
    test = robonet.standard_test_clips("~/robonet/hdf5", "test_256.txt")   # the 256-file benchmark clips
    batch = test[0]   # frames [12, 3, 64, 64] float in [0, 1], actions [11, 4]

Action harmonisation. Robots record different action spaces: most RoboNet robots use 4-D actions
(x, y, z, theta) with an *autograsp* primitive that closes the gripper automatically, some record 5-D actions
(x, y, z, theta, gripper). One model trained over all robots needs one action width:

* ``target_adim=4`` (default): 4-D actions pass through; 5-D actions are cut to their first four entries
  (x, y, z, theta). Actions of width < 4 are zero-padded.
* ``target_adim=5``: 5-D actions pass through; 4-D actions of an autograsp robot get a 5th, *imputed*
  gripper entry: ``high_bound[-1]`` where the next state's gripper value ``states[t + 1, -1]`` is above the
  midpoint of ``(low_bound[-1], high_bound[-1])``, else ``low_bound[-1]`` (so the action says what the
  autograsp primitive actually did between frames t and t + 1). Other 4-D robots are zero-padded.

These are the rules of RoboNet's public loader (``impute_autograsp_action``, ``PAD_ZERO``, ``CLEAVE``). States
are padded or cut to ``target_sdim`` the same way (gripper last is kept only when no cut happens).

Standard benchmark clip (action-conditioned RoboNet video prediction): the first 12 frames of camera 0,
2 context + 10 future, resized to 64x64 (256x256 supported), with actions ``[:11]``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from foresight.data.robonet_index import (  # noqa: F401  (re-exported)
    INDEX_FILENAME,
    RoboNetIndex,
    read_split_file,
    write_split_file,
)
from foresight.data.robonet_io import (  # noqa: F401  (re-exported)
    MANDATORY_METADATA,
    RoboNetFileError,
    RoboNetTrajectory,
    decode_jpeg,
    decode_mp4,
    default_metadata,
    read_file_metadata,
    read_trajectory,
    write_trajectory,
)

STANDARD_CONTEXT_FRAMES = 2
STANDARD_FUTURE_FRAMES = 10
STANDARD_IMAGE_SIZE = 64


# ----------------------------------------------------------------------------------------------------------
# harmonisation


def harmonisation_rule(adim: int, target_adim: int, primitives: str | None, *, impute_autograsp: bool = True) -> str:
    """Which rule maps ``adim``-D actions to ``target_adim``: 'identity' | 'autograsp' | 'pad' | 'cut'."""
    if adim == target_adim:
        return "identity"
    if target_adim == adim + 1 and impute_autograsp and primitives == "autograsp":
        return "autograsp"
    return "pad" if adim < target_adim else "cut"


def impute_autograsp_gripper(states: np.ndarray, low_bound: Sequence[float], high_bound: Sequence[float]) -> np.ndarray:
    """Gripper actions [T - 1] from states [T, S] (gripper last): the bound on the side of the midpoint that
    the *next* state's gripper value lies on."""
    low, high = float(np.asarray(low_bound)[-1]), float(np.asarray(high_bound)[-1])
    next_gripper = np.asarray(states)[1:, -1]  # [T-1]
    return np.where(next_gripper > (low + high) / 2.0, high, low).astype(np.float32)


def harmonise_actions(
    actions: np.ndarray,
    *,
    target_adim: int = 4,
    states: np.ndarray | None = None,
    primitives: str | None = None,
    low_bound: Sequence[float] | None = None,
    high_bound: Sequence[float] | None = None,
    impute_autograsp: bool = True,
) -> np.ndarray:
    """Map actions [T - 1, adim] to [T - 1, target_adim] (rules in the module docstring).

    ``states`` [>= T, S] (gripper last) and the bounds are needed only for the autograsp imputation; without
    them a ValueError says so. Returns float32.
    """
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2:
        raise ValueError(f"actions: expected [T-1, A], got {tuple(actions.shape)}")
    n, adim = actions.shape
    rule = harmonisation_rule(adim, target_adim, primitives, impute_autograsp=impute_autograsp)
    if rule == "identity":
        return actions
    if rule == "cut":
        return actions[:, :target_adim]
    if rule == "pad":
        return np.concatenate([actions, np.zeros((n, target_adim - adim), np.float32)], axis=1)
    if states is None or low_bound is None or high_bound is None:
        raise ValueError("autograsp gripper imputation needs states and low_bound/high_bound")
    states = np.asarray(states)
    if states.shape[0] < n + 1:
        raise ValueError(f"states: need {n + 1} steps to impute {n} gripper actions, got {states.shape[0]}")
    gripper = impute_autograsp_gripper(states[: n + 1], low_bound, high_bound)  # [T-1]
    return np.concatenate([actions, gripper[:, None]], axis=1)


def harmonise_states(states: np.ndarray, target_sdim: int) -> np.ndarray:
    """States [T, S] -> [T, target_sdim]: zero-pad or cut the trailing entries. Returns float32."""
    states = np.asarray(states, dtype=np.float32)
    s = states.shape[1]
    if s >= target_sdim:
        return states[:, :target_sdim]
    return np.concatenate([states, np.zeros((states.shape[0], target_sdim - s), np.float32)], axis=1)


def harmonised_actions_of_file(hf_path: str | os.PathLike, meta: dict[str, Any], *, target_adim: int,
                               impute_autograsp: bool = True) -> np.ndarray:
    """All harmonised actions [steps - 1, target_adim] of a file (reads states and actions only, no pixels)."""
    import h5py

    try:
        with h5py.File(hf_path, "r") as hf:
            actions = hf["policy"]["actions"][()]
            states = hf["env"]["state"][()]
    except (OSError, KeyError) as e:
        raise RoboNetFileError(hf_path, f"{type(e).__name__}: {e}") from e
    steps = int(meta["steps"])
    return harmonise_actions(actions[: steps - 1], target_adim=target_adim, states=states[:steps],
                             primitives=meta.get("primitives"), low_bound=meta.get("low_bound"),
                             high_bound=meta.get("high_bound"), impute_autograsp=impute_autograsp)


# ----------------------------------------------------------------------------------------------------------
# clips


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def load_clip(
    path: str | os.PathLike,
    *,
    meta: dict[str, Any] | None = None,
    start: int = 0,
    length: int = STANDARD_CONTEXT_FRAMES + STANDARD_FUTURE_FRAMES,
    camera: int = 0,
    image_size: int | tuple[int, int] = STANDARD_IMAGE_SIZE,
    target_adim: int = 4,
    target_sdim: int | None = 5,
    impute_autograsp: bool = True,
) -> dict[str, Any]:
    """One clip as the library's clip dict (no batch axis).

    Returns frames ``[L, 3, H, W]`` float32 in [0, 1], actions ``[L - 1, target_adim]`` float32, states
    ``[L, target_sdim]`` (omitted when ``target_sdim`` is None), plus 'file', 'robot' (= 'task'), 'start',
    'camera'.
    The autograsp imputation of the last clip action uses the state just after it, which is inside the clip.
    """
    if meta is None:
        meta = read_file_metadata(path, with_hash=False)
    traj = read_trajectory(path, cameras=[camera], image_size=_size(image_size), start=start, num_steps=length,
                           metadata=meta)
    actions = harmonise_actions(traj.actions, target_adim=target_adim, states=traj.states,
                                primitives=meta.get("primitives"), low_bound=meta.get("low_bound"),
                                high_bound=meta.get("high_bound"), impute_autograsp=impute_autograsp)
    # numpy (single-threaded) for the layout change and scaling: cheaper than torch ops in loader workers
    frames = np.ascontiguousarray(traj.images[:, 0].transpose(0, 3, 1, 2), dtype=np.float32)  # [L,H,W,3]->[L,3,H,W]
    frames *= 1.0 / 255.0
    clip: dict[str, Any] = {
        "frames": torch.from_numpy(frames),
        "actions": torch.from_numpy(actions),  # [L-1, A]
        "file": Path(path).name,
        "robot": str(meta.get("robot", "")),
        "task": str(meta.get("robot", "")),  # the robot plays the role of the task name in clip batches
        "start": int(start),
        "camera": int(camera),
    }
    if target_sdim is not None:
        clip["states"] = torch.from_numpy(harmonise_states(traj.states, target_sdim))  # [L, S]
    return clip


class RoboNetClipDataset(torch.utils.data.Dataset):
    """Fixed-length clips from indexed RoboNet files, one clip per file per epoch.

    Args (keyword-only):
        index: a `RoboNetIndex` (already filtered / selected) or a folder to index.
        context_frames, future_frames: clip length L = C + F (standard 2 + 10).
        image_size: H = W (int) or (H, W); 64 standard, 256 supported.
        camera: camera index, or 'random' to draw one of the file's cameras per item.
        random_start: draw the window start uniformly per item (training); False = the first L frames
            (the benchmark clip).
        target_adim, target_sdim, impute_autograsp: harmonisation (module docstring).
        seed: base seed; item i of epoch e uses ``numpy.random.default_rng((seed, e, i))`` so workers and
            resumed runs draw the same windows. Call `set_epoch` each epoch.
        skip_corrupt: when a file's pixels cannot be decoded, warn (naming it) and return the next readable
            file's clip instead of raising (for long training runs; evaluation should keep the default).

    ``ds[i]`` -> dict: frames ``[C+F, 3, H, W]`` float in [0, 1], actions ``[C+F-1, A]``, states
    ``[C+F, S]``, 'file', 'robot', 'start', 'camera'; torch's default collate stacks it into a clip batch.
    Files shorter than L are dropped at construction (with a warning giving the count).
    """

    def __init__(
        self,
        *,
        index: RoboNetIndex | str | os.PathLike,
        context_frames: int = STANDARD_CONTEXT_FRAMES,
        future_frames: int = STANDARD_FUTURE_FRAMES,
        image_size: int | tuple[int, int] = STANDARD_IMAGE_SIZE,
        camera: int | str = 0,
        random_start: bool = False,
        target_adim: int = 4,
        target_sdim: int | None = 5,
        impute_autograsp: bool = True,
        seed: int = 0,
        skip_corrupt: bool = False,
    ):
        if not isinstance(index, RoboNetIndex):
            index = RoboNetIndex.build(index)
        self.length = int(context_frames) + int(future_frames)
        if context_frames < 1 or future_frames < 1:
            raise ValueError(f"context_frames and future_frames must be >= 1, got {context_frames}, {future_frames}")
        if camera != "random" and not (isinstance(camera, int) and camera >= 0):
            raise ValueError(f"camera: expected an int >= 0 or 'random', got {camera!r}")
        kept = index.filter(min_steps=self.length, camera=None if camera == "random" else camera)
        if len(kept) < len(index):
            warnings.warn(f"RoboNetClipDataset: dropped {len(index) - len(kept)} of {len(index)} files that are "
                          f"shorter than {self.length} steps or lack camera {camera}", stacklevel=2)
        if len(kept) == 0:
            raise ValueError(f"no RoboNet file in {index.folder} has {self.length} steps and camera {camera}")
        self.index = kept
        self.rows = list(kept)
        self.context_frames, self.future_frames = int(context_frames), int(future_frames)
        self.image_size = _size(image_size)
        self.camera, self.random_start = camera, bool(random_start)
        self.target_adim, self.target_sdim, self.impute_autograsp = target_adim, target_sdim, impute_autograsp
        self.seed, self.epoch = int(seed), 0
        self.skip_corrupt = bool(skip_corrupt)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def window(self, i: int) -> tuple[int, int]:
        """(start, camera) of item i in the current epoch."""
        row = self.rows[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        start = int(rng.integers(0, row["steps"] - self.length + 1)) if self.random_start else 0
        camera = int(rng.integers(0, row["ncam"])) if self.camera == "random" else int(self.camera)
        return start, camera

    def _load(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        start, camera = self.window(i)
        return load_clip(row["path"], meta=row, start=start, length=self.length, camera=camera,
                         image_size=self.image_size, target_adim=self.target_adim, target_sdim=self.target_sdim,
                         impute_autograsp=self.impute_autograsp)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.skip_corrupt:
            return self._load(i)
        for k in range(len(self)):  # a corrupt file is replaced by the next readable one (deterministic)
            j = (i + k) % len(self)
            try:
                return self._load(j)
            except RoboNetFileError as e:
                warnings.warn(f"RoboNetClipDataset: skipping unreadable file: {e}", stacklevel=2)
        raise RoboNetFileError(self.index.folder, "no readable file left in the dataset")


def standard_test_clips(
    folder: str | os.PathLike | RoboNetIndex,
    split_file: str | os.PathLike | None,
    *,
    image_size: int | tuple[int, int] = STANDARD_IMAGE_SIZE,
    context_frames: int = STANDARD_CONTEXT_FRAMES,
    future_frames: int = STANDARD_FUTURE_FRAMES,
    camera: int = 0,
    target_adim: int = 4,
    strict: bool = True,
) -> RoboNetClipDataset:
    """The benchmark test clips: the files named in ``split_file`` (None: every indexed file), first
    ``context_frames + future_frames`` frames of ``camera``, in the list's order.

    ``strict``: a listed file that is missing or unreadable raises (naming up to 10); otherwise it is warned
    about and left out. Iterate it or wrap it in a DataLoader(batch_size=B) to get clip batches.
    """
    index = folder if isinstance(folder, RoboNetIndex) else RoboNetIndex.build(folder)
    if split_file is not None:
        index = index.select(read_split_file(split_file), strict=strict)
    return RoboNetClipDataset(index=index, context_frames=context_frames, future_frames=future_frames,
                              image_size=image_size, camera=camera, random_start=False, target_adim=target_adim)


def iter_clip_batches(dataset: torch.utils.data.Dataset, *, batch_size: int = 16,
                      num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """Yield clip batches (frames [B, C+F, 3, H, W], actions [B, C+F-1, A], ...) in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    yield from loader


# ----------------------------------------------------------------------------------------------------------
# conversion into the library's episode store


def convert_to_episodes(
    index: RoboNetIndex,
    out_root: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] = STANDARD_IMAGE_SIZE,
    camera: int = 0,
    target_adim: int = 4,
    target_sdim: int = 5,
    test_files: Iterable[str] = (),
    impute_autograsp: bool = True,
    progress: bool = True,
) -> dict[str, int]:
    """Write every indexed trajectory into a `foresight.data.episodes` dataset at ``out_root``.

    Each trajectory becomes one episode: frames uint8 [steps, H, W, 3] of ``camera``, harmonised actions
    [steps - 1, target_adim] and states [steps, target_sdim]; task = the robot name, variation = a per-robot
    counter, split = 'test' for names in ``test_files`` else 'train'; the source file name and hash go in the
    record's ``extra``. Resumable: files already recorded (by name) are skipped. Unreadable files are
    skipped with a warning. Returns counts {'written', 'skipped_existing', 'failed'}.
    """
    from foresight.data.episodes import EpisodeWriter

    h, w = _size(image_size)
    meta = {"source": "robonet", "image_size": [h, w], "camera": camera, "action_dim": target_adim,
            "state_dim": target_sdim, "action_harmonisation": "autograsp-impute" if impute_autograsp else "pad/cut"}
    writer = EpisodeWriter(out_root, meta=meta)
    done = {r.extra.get("file") for r in writer.records}
    next_variation: dict[str, int] = {}
    for r in writer.records:
        next_variation[r.task] = max(next_variation.get(r.task, 0), r.variation + 1)
    test = {Path(n).name for n in test_files}
    counts = {"written": 0, "skipped_existing": 0, "failed": 0}
    for row in tqdm(list(index), desc="converting RoboNet", disable=not progress):
        if row["file"] in done:
            counts["skipped_existing"] += 1
            continue
        if row.get("ncam", 0) <= camera or row["steps"] < 2:
            counts["failed"] += 1
            warnings.warn(f"convert_to_episodes: skipping {row['path']}: no camera {camera} or < 2 steps")
            continue
        try:
            traj = read_trajectory(row["path"], cameras=[camera], image_size=(h, w), metadata=row)
            actions = harmonise_actions(traj.actions, target_adim=target_adim, states=traj.states,
                                        primitives=row.get("primitives"), low_bound=row.get("low_bound"),
                                        high_bound=row.get("high_bound"), impute_autograsp=impute_autograsp)
        except (RoboNetFileError, ValueError) as e:
            counts["failed"] += 1
            warnings.warn(f"convert_to_episodes: skipping {row['path']}: {e}")
            continue
        task = str(row.get("robot") or "unknown")
        variation = next_variation.get(task, 0)
        next_variation[task] = variation + 1
        episode = {"frames": traj.images[:, 0], "actions": actions,
                   "states": harmonise_states(traj.states, target_sdim)}
        writer.write(episode, task=task, variation=variation, split="test" if row["file"] in test else "train",
                     extra={"file": row["file"], "sha256": row.get("sha256"), "adim": row["adim"],
                            "primitives": row.get("primitives")})
        counts["written"] += 1
    return counts


# ----------------------------------------------------------------------------------------------------------
# synthetic files in the real layout (smoke tests, benchmarks, demos)

_ROBOT_SPECS = {  # robot -> (adim, primitives): the two action-space families found in RoboNet
    "sawyer": (4, "autograsp"), "franka": (4, "autograsp"), "kuka": (4, "autograsp"), "baxter": (4, "autograsp"),
    "widowx": (5, "none"), "R3": (4, "autograsp"), "fetch": (4, "autograsp"),
}


def write_synthetic_trajectories(
    folder: str | os.PathLike,
    num_files: int,
    *,
    robots: Sequence[str] = ("sawyer", "widowx"),
    steps: int = 30,
    frame_size: tuple[int, int] = (48, 64),
    num_cams: int = 1,
    encoding: str = "mp4",
    noise: float = 3.0,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write ``num_files`` RoboNet-layout files of a moving blob (a stand-in when the real data is absent).

    Files are named ``{robot}_traj{i}.hdf5``; actions are the blob's displacement (so an action-conditioned
    model can learn them), the gripper state toggles, robots cycle through ``robots`` with RoboNet's action
    widths (4-D autograsp or 5-D). ``noise`` is the std of per-pixel camera noise (grey levels). Returns the
    paths.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    h, w = frame_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in tqdm(range(num_files), desc="writing synthetic RoboNet", disable=not progress):
        robot = robots[i % len(robots)]
        adim, primitives = _ROBOT_SPECS.get(robot, (4, "autograsp"))
        moves = rng.normal(0, 0.04, size=(steps - 1, 2)).astype(np.float32)
        pos = np.clip(np.concatenate([rng.uniform(0.3, 0.7, (1, 2)), moves]).cumsum(0), 0.1, 0.9)  # [T, 2]
        gripper = np.where((np.arange(steps) // 7) % 2 == 0, 1.0, -1.0).astype(np.float32)
        states = np.concatenate([pos, np.zeros((steps, 2), np.float32), gripper[:, None]], axis=1)  # [T, 5]
        actions = np.zeros((steps - 1, adim), np.float32)
        actions[:, :2] = np.diff(pos, axis=0)
        if adim == 5:
            actions[:, 4] = gripper[1:]
        # textured table + camera noise, so that codecs see realistic (not trivially compressible) frames
        background = rng.uniform(40, 120, size=3) + 25 * np.sin(xx[..., None] / rng.uniform(3, 9, 3)
                                                                 + yy[..., None] / rng.uniform(3, 9, 3))
        images = np.empty((steps, num_cams, h, w, 3), np.uint8)
        for t in range(steps):
            for c in range(num_cams):
                cy, cx = pos[t, 0] * h, (pos[t, 1] if c == 0 else 1 - pos[t, 1]) * w
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.08 * h) ** 2))
                colour = (200.0, 60.0, 40.0) if gripper[t] > 0 else (40.0, 200.0, 60.0)
                frame = background + blob[..., None] * (np.array(colour) - background)
                images[t, c] = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255)
        path = folder / f"{robot}_traj{i}.hdf5"
        write_trajectory(path, images=images, states=states, actions=actions, encoding=encoding,
                         metadata=default_metadata(robot=robot, primitives=primitives,
                                                   action_space="x,y,z,theta" + (",gripper" if adim == 5 else "")),
                         low_bound=[0.0, 0.0, 0.0, -np.pi, -1.0], high_bound=[1.0, 1.0, 0.3, np.pi, 1.0])
        paths.append(path)
    return paths
