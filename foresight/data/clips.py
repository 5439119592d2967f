"""Training clips cut from episodes: windows of ``context + future`` frames with the actions between them.

Axis legend::

    N  frames of all episodes of the split, back to back     B  clips in a batch
    T  frames per clip = context + future                    A  action dimension (after stride reduction)
    H, W  image size                                         S  state dimension

A clip batch (the `WorldModel` training convention)::

    frames   float32 [B, T, 3, H, W] in [0, 1]   (uint8 with the same layout if asked, for GPU-side conversion)
    actions  float32 [B, T-1, A]                 actions[:, t] moves frames[:, t] to frames[:, t+1]
    states   float32 [B, T, S]                   (when the episodes have states)
    task     int64   [B]                         index into ``dataset.task_names``
    episode  int64   [B], start int64 [B]        where the clip came from (episode index, first frame)

Speed: all frames of the split sit in one contiguous uint8 array ``[N, 3, H, W]`` (channels moved first once, at
load time); a batch is one fancy-index gather plus one uint8 -> float conversion, so `ClipLoader` serves thousands
of clips per second from one core without worker processes.
Memory: N * H * W * 3 bytes (64x64: 12 KiB per frame; ~2.7 GiB for 2,250 Meta-World demos of ~100 frames).

Frame stride s > 1 keeps every s-th frame; the s raw actions between two kept frames are reduced by
``action_reduce``: 'concat' (lossless, A = s * A_raw), 'sum' (net displacement for delta-position actions) or
'mean'. Translation augmentation (HARP: up to m=4 pixels) shifts all frames of a clip by the same random
(dy, dx) in [-m, m], filling the uncovered border by replicating the edge pixels.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["ClipDataset", "ClipLoader", "shift_augment"]


def shift_augment(clips: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each clip by a random integer (dy, dx) in [-max_shift, max_shift], replicate-padded.

    clips: [B, T, C, H, W]; the same shift for every frame of a clip, a different one per clip:
    ``out[b, :, :, y, x] = clips[b, :, :, clip(y + dy_b), clip(x + dx_b)]``. Returns a new array.
    """
    if max_shift <= 0:
        return clips
    B, H, W, m = clips.shape[0], clips.shape[-2], clips.shape[-1], max_shift
    dy = rng.integers(-m, m + 1, size=B)
    dx = rng.integers(-m, m + 1, size=B)
    out = np.empty_like(clips)
    # Per clip: copy the overlapping window, then replicate its border rows/columns into the uncovered strips.
    # A few slice copies per clip; much cheaper than padding the batch or gathering per pixel.
    for b in range(B):
        sy0, sy1, sx0, sx1 = max(0, dy[b]), H + min(0, dy[b]), max(0, dx[b]), W + min(0, dx[b])
        ty0, tx0 = max(0, -dy[b]), max(0, -dx[b])
        ty1, tx1 = ty0 + (sy1 - sy0), tx0 + (sx1 - sx0)
        o = out[b]  # [T, C, H, W] view
        o[..., ty0:ty1, tx0:tx1] = clips[b, ..., sy0:sy1, sx0:sx1]
        o[..., :ty0, tx0:tx1] = o[..., ty0:ty0 + 1, tx0:tx1]
        o[..., ty1:, tx0:tx1] = o[..., ty1 - 1:ty1, tx0:tx1]
        o[..., :, :tx0] = o[..., :, tx0:tx0 + 1]
        o[..., :, tx1:] = o[..., :, tx1 - 1:tx1]
    return out


class ClipDataset(torch.utils.data.Dataset):
    """Fixed-length windows over a set of episodes.

    Args:
        episodes: an `EpisodeDataset` or any sequence of episode dicts (frames uint8 [T, H, W, 3], actions
            [T-1, A], optional states [T, S], optional 'task' str).
        context, future: frames per clip = context + future (HARP Meta-World: 1 + 11; RoboNet style: 2 + 10).
        stride: keep every stride-th frame (1 = consecutive frames).
        window_step: distance in raw frames between the starts of consecutive windows of an episode.
        augment_shift: maximum random translation in pixels (0 = off; HARP uses 4).
        action_reduce: 'concat' | 'sum' | 'mean' for the stride raw actions between two kept frames.
        task_names: the task vocabulary for the 'task' ids (default: sorted names found in ``episodes``); pass a
            fixed list (e.g. all 50 MT50 names) so ids agree across splits and subsets.
        seed: seed of the augmentation randomness of ``ds[i]`` (per item: (seed, epoch, i)).
        frames_dtype: torch.float32 (default, [0, 1]) or torch.uint8 (convert later, e.g. on the GPU).
        frames_dir: keep the frames in a file in this folder instead of in memory (`foresight.data.frame_store`:
            for splits larger than RAM; needs an `EpisodeDataset`). The file is built on first use and reused while
            the episodes are unchanged; clips are read from it with one read per clip.
    """

    def __init__(
        self,
        episodes: Sequence[dict] | Iterable[dict],
        *,
        context: int = 1,
        future: int = 11,
        stride: int = 1,
        window_step: int = 1,
        augment_shift: int = 0,
        action_reduce: str = "concat",
        task_names: Sequence[str] | None = None,
        seed: int = 0,
        with_states: bool = True,
        frames_dtype: torch.dtype = torch.float32,
        frames_dir: str | os.PathLike | None = None,
    ):
        if context < 1 or future < 0 or stride < 1 or window_step < 1 or augment_shift < 0:
            raise ValueError(f"need context>=1, future>=0, stride>=1, window_step>=1, augment_shift>=0; got "
                             f"{context=}, {future=}, {stride=}, {window_step=}, {augment_shift=}")
        if action_reduce not in ("concat", "sum", "mean"):
            raise ValueError(f"action_reduce must be 'concat', 'sum' or 'mean', got {action_reduce!r}")
        if frames_dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"frames_dtype must be torch.float32 or torch.uint8, got {frames_dtype}")
        self.context, self.future, self.stride = context, future, stride
        self.clip_length = context + future
        self.augment_shift = augment_shift
        self.action_reduce = action_reduce
        self.seed = seed
        self.epoch = 0
        self.frames_dtype = frames_dtype
        self.frames_built = False  # frames_dir: whether this construction wrote the frame file
        self._load(episodes, task_names, with_states, window_step, frames_dir)

    # ------------------------------------------------------------------------------------------ building

    def _load(self, episodes, task_names, with_states: bool, window_step: int, frames_dir=None) -> None:
        records = getattr(episodes, "records", None)
        if records is not None:
            # An EpisodeDataset: lengths are known from the manifest, so preallocate and load one episode at a
            # time (never two copies of all frames in memory).
            n_eps, lengths = len(episodes), [r.length for r in records]
            get = episodes.__getitem__
        else:
            if frames_dir is not None:
                raise ValueError("frames_dir needs an EpisodeDataset (its manifest keys the frame file), got "
                                 f"{type(episodes).__name__}")
            eps = list(episodes)
            n_eps, lengths = len(eps), [len(e["frames"]) for e in eps]
            get = eps.__getitem__
        if n_eps == 0:
            raise ValueError("ClipDataset needs at least one episode, got none")
        first = get(0)
        H, W = first["frames"].shape[1:3]
        total = sum(lengths)
        actions = np.zeros((total, np.shape(first["actions"])[1]), dtype=np.float32)
        use_states = with_states and "states" in first
        states = np.empty((total, np.shape(first["states"])[1]), np.float32) if use_states else None
        ep_tasks = [records[i].task if records is not None else "" for i in range(n_eps)]
        ep_start = np.zeros(n_eps + 1, dtype=np.int64)
        ep_start[1:] = np.cumsum(lengths)

        def fill(i: int, ep: dict) -> None:
            """Actions and states of episode i (frames are placed by the caller)."""
            T, offset = len(ep["actions"]) + 1, ep_start[i]
            if T != lengths[i]:
                raise ValueError(f"episode {i}: manifest says {lengths[i]} frames, file has {T}")
            # actions[g] moves global frame g to g+1; the last frame of each episode keeps a zero action
            actions[offset:offset + T - 1] = ep["actions"]
            if states is not None:
                states[offset:offset + T] = ep["states"]
            if records is None:
                ep_tasks[i] = str(ep.get("task", ""))

        def check(i: int, ep: dict) -> None:
            if len(ep["frames"]) != lengths[i]:
                raise ValueError(f"episode {i}: manifest says {lengths[i]} frames, file has {len(ep['frames'])}")
            if ep["frames"].shape[1:] != (H, W, 3):
                raise ValueError(f"episode {i}: frames {list(ep['frames'].shape)} do not match "
                                 f"[T, {H}, {W}, 3] of the first episode")

        if frames_dir is None:
            frames = np.empty((total, 3, H, W), dtype=np.uint8)  # channels first: batches need no transpose
            for i in range(n_eps):
                ep = first if i == 0 else get(i)
                check(i, ep)
                frames[ep_start[i]:ep_start[i + 1]] = ep["frames"].transpose(0, 3, 1, 2)  # -> [T, 3, H, W]
                fill(i, ep)
        else:
            from foresight.data.episodes import load_episode
            from foresight.data.frame_store import episodes_key, open_or_build

            def write_all(write) -> None:
                for i in range(n_eps):
                    ep = first if i == 0 else get(i)
                    check(i, ep)
                    write(ep["frames"].transpose(0, 3, 1, 2))
                    fill(i, ep)

            key = episodes_key(records, {"layout": "chw", "height": int(H), "width": int(W)})
            frames, self.frames_built = open_or_build(frames_dir, key, (total, 3, int(H), int(W)), write_all)
            if not self.frames_built:  # frames already on disk: read only the small arrays of each episode
                small = ("actions", "states") if use_states else ("actions",)
                for i, r in enumerate(records):
                    fill(i, load_episode(episodes.root / r.file, nbytes=r.nbytes, crc32=r.crc32, keys=small))
        self.frames, self.actions_raw, self.states = frames, actions, states  # frames: ndarray or DiskFrames
        self.episode_start = ep_start
        self.episode_tasks = ep_tasks

        vocab = list(task_names) if task_names is not None else sorted(set(ep_tasks))
        missing = sorted(set(ep_tasks) - set(vocab))
        if missing:
            raise ValueError(f"episodes have tasks not in task_names: {missing}")
        self.task_names = vocab
        tid = {t: k for k, t in enumerate(vocab)}
        self.episode_task_ids = np.array([tid[t] for t in ep_tasks], dtype=np.int64)

        span = (self.clip_length - 1) * self.stride  # raw frames from the first to the last kept frame
        starts, owners = [], []
        for e in range(n_eps):
            lo, hi = ep_start[e], ep_start[e + 1]
            s = np.arange(lo, hi - span, window_step, dtype=np.int64)
            starts.append(s)
            owners.append(np.full(len(s), e, dtype=np.int64))
        self.starts = np.concatenate(starts)
        self.owners = np.concatenate(owners)
        if len(self.starts) == 0:
            raise ValueError(f"no episode is long enough for clips of {self.clip_length} frames at stride "
                             f"{self.stride} (needs {span + 1} frames)")
        self._frame_offsets = np.arange(self.clip_length, dtype=np.int64) * self.stride  # [T]
        self._action_offsets = np.arange(span, dtype=np.int64)  # [(T-1) * stride]

    # ------------------------------------------------------------------------------------------ access

    @property
    def image_size(self) -> int:
        return int(self.frames.shape[-1])

    @property
    def action_dim(self) -> int:
        a = self.actions_raw.shape[1]
        return a * self.stride if self.action_reduce == "concat" else a

    def __len__(self) -> int:
        return len(self.starts)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws of ``ds[i]`` (call once per epoch when using a torch DataLoader)."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        batch = self.get_batch(np.array([i]), rng=rng)
        return {k: v[0] for k, v in batch.items()}

    def get_batch(self, indices: np.ndarray | Sequence[int], *, rng: np.random.Generator | None = None,
                  augment: bool = True) -> dict[str, torch.Tensor]:
        """Gather clips ``indices`` into a batch dict (see module docstring). ``rng`` drives augmentation."""
        idx = np.asarray(indices, dtype=np.int64)
        starts = self.starts[idx]  # [B]
        fidx = starts[:, None] + self._frame_offsets[None, :]  # [B, T]
        clips = self.frames[fidx]  # [B, T, 3, H, W] uint8
        if augment and self.augment_shift > 0:
            clips = shift_augment(clips, self.augment_shift, rng if rng is not None else np.random.default_rng())
        if self.frames_dtype == torch.float32:
            # numpy's fused uint8 -> float32 multiply is ~4x faster here than torch's .float() on a fresh buffer
            clips = np.multiply(clips, np.float32(1.0 / 255.0), dtype=np.float32)
        frames = torch.from_numpy(clips)
        B, T = fidx.shape
        raw = self.actions_raw[starts[:, None] + self._action_offsets[None, :]]  # [B, (T-1)*s, A]
        raw = raw.reshape(B, T - 1, self.stride, -1)  # [B, T-1, s, A]
        if self.action_reduce == "concat":
            act = raw.reshape(B, T - 1, -1)  # [B, T-1, s*A]
        elif self.action_reduce == "sum":
            act = raw.sum(axis=2)
        else:
            act = raw.mean(axis=2)
        out = {
            "frames": frames,
            "actions": torch.from_numpy(np.ascontiguousarray(act, dtype=np.float32)),
            "task": torch.from_numpy(self.episode_task_ids[self.owners[idx]]),
            "episode": torch.from_numpy(self.owners[idx]),
            "start": torch.from_numpy(starts - self.episode_start[self.owners[idx]]),
        }
        if self.states is not None:
            out["states"] = torch.from_numpy(self.states[fidx])  # [B, T, S]
        return out


class ClipLoader:
    """A DataLoader-free batch iterator over a `ClipDataset`: vectorised gathers, optional prefetch thread.

    Each ``iter()`` is one epoch. With ``shuffle`` the order comes from ``np.random.default_rng([seed, epoch])``,
    so a run is reproducible and resumable by epoch. ``device``: batches are moved there; uint8 frames are
    converted to float on the device (4x less host-to-device traffic), so pass ``frames_dtype=torch.uint8`` to
    the dataset when training on a GPU. ``prefetch`` > 0 prepares that many batches in a background thread
    (numpy gathers release the GIL).
    """

    def __init__(self, dataset: ClipDataset, *, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, device: str | torch.device | None = None, prefetch: int = 2,
                 augment: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.device = torch.device(device) if device is not None else None
        self.prefetch, self.augment = prefetch, augment
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.dataset)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.dataset.get_batch(idx, rng=rng, augment=self.augment)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device is None:
            return batch
        pin = self.device.type == "cuda"
        out = {}
        for k, v in batch.items():
            v = v.pin_memory() if pin else v
            v = v.to(self.device, non_blocking=pin)
            if k == "frames" and v.dtype == torch.uint8:
                v = v.float().div_(255.0)
            out[k] = v
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        if self.prefetch <= 0:
            for batch in self._batches(epoch):
                yield self._to_device(batch)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for batch in self._batches(epoch):
                    if stop.is_set():
                        return
                    q.put(batch)
                q.put(done)
            except BaseException as e:  # surface errors in the consumer
                q.put(e)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(item)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=0.01)
