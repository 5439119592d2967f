"""The episode store: round trip, resume after a kill, and corrupt files named in the error."""

import json
import os

import numpy as np
import pytest

from foresight.data.episodes import (
    MANIFEST,
    CorruptEpisodeError,
    EpisodeDataset,
    EpisodeWriter,
    read_manifest,
    save_episode,
)


def make_episode(T=7, H=8, A=4, S=5, seed=0):
    rng = np.random.default_rng(seed)
    success = np.zeros(T, bool)
    success[T - 2:] = True
    return {
        "frames": rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8),
        "actions": rng.standard_normal((T - 1, A)).astype(np.float32),
        "states": rng.standard_normal((T, S)).astype(np.float32),
        "rewards": rng.standard_normal(T - 1).astype(np.float32),
        "success": success,
    }


def fill(root, keys, split_of=lambda v: "train"):
    w = EpisodeWriter(root, meta={"image_size": 8})
    for task, v in keys:
        w.write(make_episode(seed=v), task=task, variation=v, split=split_of(v))
    return w


def test_round_trip_is_bit_identical(tmp_path):
    ep = make_episode(T=9)
    w = EpisodeWriter(tmp_path, meta={"image_size": 8})
    rec = w.write(ep, task="reach-v3", variation=3, split="test", extra={"seed": 3})
    assert rec.first_success == 7 and rec.length == 9
    ds = EpisodeDataset(tmp_path)
    assert len(ds) == 1
    got = ds[0]
    for k in ("frames", "actions", "states", "rewards", "success"):
        np.testing.assert_array_equal(got[k], ep[k])
        assert got[k].dtype == ep[k].dtype
    assert (got["task"], got["variation"], got["split"]) == ("reach-v3", 3, "test")


def test_split_and_task_filters(tmp_path):
    keys = [("a", v) for v in range(4)] + [("b", v) for v in range(4)]
    fill(tmp_path, keys, split_of=lambda v: "test" if v == 3 else "train")
    assert len(EpisodeDataset(tmp_path, split="train")) == 6
    assert len(EpisodeDataset(tmp_path, split="test")) == 2
    assert len(EpisodeDataset(tmp_path, split="train", tasks=["b"])) == 3
    assert EpisodeDataset(tmp_path).task_names == ["a", "b"]
    with pytest.raises(ValueError, match="split"):
        EpisodeDataset(tmp_path, split="val")


def test_resume_after_kill_mid_append(tmp_path):
    """A kill can leave an episode file without its manifest line and a half-written last line."""
    w = fill(tmp_path, [("a", 0), ("a", 1)])
    # episode 2 was written, then the process died while appending its manifest line
    rec = save_episode(tmp_path, make_episode(seed=2), task="a", variation=2, split="train")
    with open(tmp_path / MANIFEST, "ab") as f:
        f.write(rec.to_json().encode()[:25])  # partial line, no newline
    # readers ignore the partial tail; the dataset holds the two finished episodes
    assert [r.variation for r in read_manifest(tmp_path)] == [0, 1]
    # a resumed writer repairs the tail and reports exactly what is done
    w2 = EpisodeWriter(tmp_path, meta={"image_size": 8})
    assert w2.done_keys() == {("a", 0), ("a", 1)}
    todo = [("a", v) for v in range(4) if ("a", v) not in w2.done_keys()]
    for task, v in todo:
        w2.write(make_episode(seed=v), task=task, variation=v, split="train")
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)  # nothing twice, nothing broken
    ds = EpisodeDataset(tmp_path)
    assert sorted(r.variation for r in ds.records) == [0, 1, 2, 3]
    np.testing.assert_array_equal(ds[2]["frames"], make_episode(seed=2)["frames"])


def test_failures_are_counted_not_returned(tmp_path):
    w = fill(tmp_path, [("a", 0)])
    w.record_failure(task="a", variation=1, split="train", length=500)
    assert len(EpisodeDataset(tmp_path)) == 1
    assert EpisodeDataset(tmp_path).summary() == {"a": {"train": 1, "failed": 1}}
    assert EpisodeWriter(tmp_path).done_keys() == {("a", 0), ("a", 1)}


def test_truncated_file_error_names_it(tmp_path):
    fill(tmp_path, [("a", 0), ("a", 1)])
    path = tmp_path / "episodes" / "a" / "00001.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptEpisodeError, match="00001.npz"):
        EpisodeDataset(tmp_path)


def test_corrupt_bytes_error_names_it(tmp_path):
    fill(tmp_path, [("a", 0)])
    path = tmp_path / "episodes" / "a" / "00000.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    ds = EpisodeDataset(tmp_path)  # sizes still match
    with pytest.raises(CorruptEpisodeError, match="00000.npz"):
        ds[0]


def test_missing_file_and_bad_manifest(tmp_path):
    fill(tmp_path, [("a", 0), ("a", 1)])
    os.remove(tmp_path / "episodes" / "a" / "00000.npz")
    with pytest.raises(CorruptEpisodeError, match="00000.npz"):
        EpisodeDataset(tmp_path)
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    (tmp_path / MANIFEST).write_text("{not json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(CorruptEpisodeError, match="manifest line 1"):
        read_manifest(tmp_path)


def test_meta_clash_and_bad_episode_shapes(tmp_path):
    EpisodeWriter(tmp_path, meta={"image_size": 8})
    with pytest.raises(ValueError, match="image_size"):
        EpisodeWriter(tmp_path, meta={"image_size": 64})
    ep = make_episode()
    ep["actions"] = ep["actions"][:-1]
    with pytest.raises(ValueError, match="actions must be"):
        save_episode(tmp_path, ep, task="a", variation=0, split="train")
