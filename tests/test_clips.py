"""Clip windows: alignment of frames and actions, stride, augmentation, the fast loader."""

import numpy as np
import pytest
import torch

from foresight.data.clips import ClipDataset, ClipLoader, shift_augment
from foresight.data.episodes import EpisodeDataset, EpisodeWriter


def counting_episode(T, offset, H=8, task="a"):
    """Frame t is filled with value offset+t; action t is (offset+t) so alignment is checkable."""
    frames = np.broadcast_to((offset + np.arange(T, dtype=np.uint8))[:, None, None, None], (T, H, H, 3)).copy()
    actions = np.stack([offset + np.arange(T - 1), -(offset + np.arange(T - 1))], 1).astype(np.float32)
    states = (offset + np.arange(T, dtype=np.float32))[:, None].repeat(3, 1)
    return {"frames": frames, "actions": actions, "states": states, "task": task}


@pytest.fixture
def episodes():
    return [counting_episode(20, 0, task="a"), counting_episode(15, 100, task="b")]


def test_windows_count_and_alignment(episodes):
    ds = ClipDataset(episodes, context=2, future=3)
    assert len(ds) == (20 - 4) + (15 - 4)  # windows that fit inside each episode, none across the boundary
    b = ds.get_batch(np.arange(len(ds)))
    assert b["frames"].shape == (len(ds), 5, 3, 8, 8) and b["frames"].dtype == torch.float32
    assert b["actions"].shape == (len(ds), 4, 2) and b["states"].shape == (len(ds), 5, 3)
    first = (b["frames"][:, :, 0, 0, 0] * 255).round()  # [B, T] frame values
    # consecutive frames, and the action at t carries the value of frame t (moves t -> t+1)
    assert torch.all(first[:, 1:] - first[:, :-1] == 1)
    assert torch.equal(b["actions"][:, :, 0], first[:, :-1])
    assert torch.equal(b["states"][:, :, 0], first)
    assert b["task"].tolist() == [0] * 16 + [1] * 11
    assert ds.task_names == ["a", "b"]
    assert b["start"][16].item() == 0 and b["episode"][16].item() == 1


def test_stride_and_action_reduce(episodes):
    ds = ClipDataset(episodes, context=1, future=3, stride=2, action_reduce="concat")
    assert len(ds) == (20 - 6) + (15 - 6)
    b = ds.get_batch([0])
    assert ((b["frames"][0, :, 0, 0, 0] * 255).round().tolist()) == [0, 2, 4, 6]
    assert b["actions"].shape == (1, 3, 4) and ds.action_dim == 4
    assert b["actions"][0, 1].tolist() == [2, -2, 3, -3]
    s = ClipDataset(episodes, context=1, future=3, stride=2, action_reduce="sum").get_batch([0])
    assert s["actions"][0, :, 0].tolist() == [1, 5, 9]


def test_shift_augment_is_a_replicate_padded_translation():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (16, 3, 3, 10, 10), dtype=np.uint8)  # [B, T, C, H, W]
    out = shift_augment(clips, 2, np.random.default_rng(1))
    g = np.random.default_rng(1)
    dy, dx = g.integers(-2, 3, 16), g.integers(-2, 3, 16)
    idx = np.arange(10)
    for i in range(16):  # out[y, x] = clips[clip(y + dy), clip(x + dx)], the same for every frame of a clip
        rows, cols = np.clip(idx + dy[i], 0, 9), np.clip(idx + dx[i], 0, 9)
        np.testing.assert_array_equal(out[i], clips[i][:, :, rows][:, :, :, cols])
    assert np.any(dy != 0) and not np.array_equal(out, clips)
    assert shift_augment(clips, 0, rng) is clips


def test_item_augmentation_is_reproducible(episodes):
    ds = ClipDataset(episodes, context=1, future=3, augment_shift=2, seed=5)
    a, b = ds[3], ds[3]
    assert torch.equal(a["frames"], b["frames"])
    assert a["frames"].shape == (4, 3, 8, 8)


def test_loader_epoch_covers_all_and_uint8(episodes):
    ds = ClipDataset(episodes, context=1, future=3, frames_dtype=torch.uint8)
    loader = ClipLoader(ds, batch_size=4, shuffle=True, drop_last=False, seed=0, prefetch=2)
    seen = torch.cat([torch.stack([b["episode"], b["start"]], 1) for b in loader])
    assert len(loader) == -(-len(ds) // 4) and len(seen) == len(ds)
    assert len({tuple(x) for x in seen.tolist()}) == len(ds)
    batch = next(iter(loader))
    assert batch["frames"].dtype == torch.uint8
    on_cpu = next(iter(ClipLoader(ds, batch_size=4, device="cpu", prefetch=0)))
    assert on_cpu["frames"].dtype == torch.float32 and on_cpu["frames"].max() <= 1.0


def test_from_disk_and_errors(tmp_path, episodes):
    w = EpisodeWriter(tmp_path)
    for v, ep in enumerate(episodes):
        w.write({k: ep[k] for k in ("frames", "actions", "states")}, task=ep["task"], variation=v, split="train")
    ds = ClipDataset(EpisodeDataset(tmp_path), context=1, future=11, task_names=["z", "b", "a"])
    assert len(ds) == (20 - 11) + (15 - 11)
    assert ds.get_batch([0])["task"].item() == 2
    with pytest.raises(ValueError, match="not in task_names"):
        ClipDataset(episodes, task_names=["a"])
    with pytest.raises(ValueError, match="long enough"):
        ClipDataset(episodes, context=10, future=20)


def _random_store(root, lengths, seed=0, H=8):
    w = EpisodeWriter(root)
    g = np.random.default_rng(seed)
    for v, T in enumerate(lengths):
        w.write({"frames": g.integers(0, 256, (T, H, H, 3), dtype=np.uint8),
                 "actions": g.uniform(-1, 1, (T - 1, 2)).astype(np.float32),
                 "states": g.standard_normal((T, 3)).astype(np.float32)},
                task="ab"[v % 2], variation=v, split="train")


def test_frames_on_disk_give_the_in_memory_batches_and_are_reused(tmp_path):
    import pickle

    from foresight.data.frame_store import DiskFrames

    store, cache = tmp_path / "store", tmp_path / "cache"
    _random_store(store, [20, 15, 31])
    kw = dict(context=2, future=4, stride=2, augment_shift=2)
    ram = ClipDataset(EpisodeDataset(store), **kw)
    disk = ClipDataset(EpisodeDataset(store), frames_dir=cache, **kw)
    assert isinstance(disk.frames, DiskFrames) and disk.frames_built and disk.frames.shape == ram.frames.shape
    idx = np.random.default_rng(1).integers(0, len(ram), 10)
    for augment in (False, True):
        a = ram.get_batch(idx, rng=np.random.default_rng(5), augment=augment)
        b = disk.get_batch(idx, rng=np.random.default_rng(5), augment=augment)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # numpy-style indexing: ints, negative ints, slices, arrays of any shape, repeats and gaps
    for index in (3, -1, slice(5, 9), np.array([[7, 7, 0], [65, 8, 9]])):
        np.testing.assert_array_equal(disk.frames[index], ram.frames[index])
    # a second dataset reuses the file (only actions and states are read) and gives the same clips
    again = ClipDataset(EpisodeDataset(store), frames_dir=cache, **kw)
    assert not again.frames_built
    torch.testing.assert_close(again.get_batch(idx, augment=False)["actions"], ram.get_batch(idx, augment=False)["actions"])
    # a DataLoader worker gets a copy without the parent's file descriptor and opens its own
    copy = pickle.loads(pickle.dumps(disk.frames))
    np.testing.assert_array_equal(copy[np.arange(4)], ram.frames[:4])
    # a changed store gets a new file
    _random_store(store, [20, 15, 31, 12], seed=0)
    changed = ClipDataset(EpisodeDataset(store), frames_dir=cache, **kw)
    assert changed.frames_built and changed.frames.shape[0] == 20 + 15 + 31 + 12
    with pytest.raises(ValueError, match="EpisodeDataset"):
        ClipDataset([counting_episode(20, 0)], frames_dir=cache)
    with pytest.raises(IndexError):
        disk.frames[np.array([10_000])]
