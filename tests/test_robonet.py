"""RoboNet support: writer -> reader round trips, metadata index, harmonisation, clips, conversion."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import torch

from foresight.data import robonet as rn
from foresight.data import robonet_index, robonet_io

T = 14  # > 12 so the standard clip fits with room for a random window
H, W = 24, 32


def smooth_video(t: int, n_cams: int, seed: int) -> np.ndarray:
    """uint8 [T, C, H, W, 3]: smooth moving gradients (codec-friendly) plus a pure red/green/blue patch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.zeros((t, n_cams, H, W, 3), np.uint8)
    for i in range(t):
        for c in range(n_cams):
            ph = rng.uniform(0, 6.28, 3)
            for k in range(3):
                out[i, c, ..., k] = (110 + 60 * np.sin(xx / 7 + yy / 9 * (k + 1) + i * 0.3 + c + ph[k])).astype(np.uint8)
            out[i, c, :8, :8] = [[220, 20, 20], [20, 220, 20], [20, 20, 220]][c % 3]
    return out


def make_file(path, *, robot="sawyer", adim=4, primitives="autograsp", encoding="mp4", n_cams=2, t=T, seed=0,
              states=None):
    rng = np.random.default_rng(seed)
    images = smooth_video(t, n_cams, seed)
    if states is None:
        states = rng.normal(size=(t, 5)).astype(np.float32)
    actions = rng.normal(size=(t - 1, adim)).astype(np.float32)
    rn.write_trajectory(path, images=images, states=states, actions=actions, encoding=encoding,
                        metadata=rn.default_metadata(robot=robot, primitives=primitives,
                                                     object_classes=["toys", "cups"]),
                        qpos=rng.normal(size=(t, 7)), qvel=rng.normal(size=(t, 7)),
                        low_bound=[-0.5, -0.5, 0.0, -3.0, -1.0], high_bound=[0.5, 0.5, 0.3, 3.0, 1.0])
    return images, states, actions


@pytest.fixture()
def folder(tmp_path):
    """Four files: two robots, 4-D autograsp and 5-D actions, both encodings."""
    specs = [("sawyer", 4, "autograsp", "mp4"), ("widowx", 5, "none", "mp4"),
             ("sawyer", 4, "autograsp", "jpeg"), ("franka", 5, "none", "jpeg")]
    for i, (robot, adim, prim, enc) in enumerate(specs):
        make_file(tmp_path / f"{robot}_traj{i}.hdf5", robot=robot, adim=adim, primitives=prim, encoding=enc, seed=i)
    return tmp_path


# ---------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize("encoding,n_cams,tol,backend",
                         [("mp4", 2, 6.0, "ffmpeg"), ("mp4", 2, 6.0, "pyav"), ("jpeg", 3, 4.0, None)])
def test_round_trip_writer_reader(tmp_path, monkeypatch, encoding, n_cams, tol, backend):
    if backend == "pyav" and not robonet_io._have_pyav():
        pytest.skip("PyAV not installed")
    if backend is not None:
        monkeypatch.setattr(robonet_io, "_have_pyav", lambda: backend == "pyav")
    path = tmp_path / "traj.hdf5"
    images, states, actions = make_file(path, encoding=encoding, n_cams=n_cams)
    traj = rn.read_trajectory(path, cameras=None)
    assert traj.images.shape == (T, n_cams, H, W, 3) and traj.images.dtype == np.uint8
    err = np.abs(traj.images.astype(np.float32) - images).mean()
    assert err < tol, f"{encoding} round trip mean abs error {err:.2f}"
    # colour order survives (a swapped R/B would move the red patch to blue)
    for c in range(n_cams):
        patch = traj.images[:, c, 2:6, 2:6].reshape(-1, 3).mean(0)
        assert int(np.argmax(patch)) == c % 3
    np.testing.assert_array_equal(traj.states, states)
    np.testing.assert_array_equal(traj.actions, actions)
    assert traj.qpos.shape == (T, 7)
    m = traj.metadata
    assert (m["robot"], m["adim"], m["sdim"], m["ncam"], m["img_T"], m["steps"]) == ("sawyer", 4, 5, n_cams, T, T)
    assert m["img_encoding"] == encoding and m["frame_dim"] == [H, W]
    assert m["object_classes"] == ["toys", "cups"] and m["file_version"] == "0.1.0"
    assert m["high_bound"] == pytest.approx([0.5, 0.5, 0.3, 3.0, 1.0])
    # one camera, a window, and a resize
    part = rn.read_trajectory(path, cameras=[n_cams - 1], start=3, num_steps=5, image_size=(16, 16))
    assert part.images.shape == (5, 1, 16, 16, 3) and part.actions.shape == (4, 4)
    np.testing.assert_array_equal(part.actions, actions[3:7])


def test_layout_matches_published_robonet(tmp_path):
    path = tmp_path / "traj.hdf5"
    make_file(path, encoding="mp4", n_cams=2)
    with h5py.File(path, "r") as f:
        assert f["file_version"][()] in (b"0.1.0", "0.1.0")
        assert f["env"].attrs["n_cams"] == 2 and f["env"].attrs["cam_encoding"] == "mp4"
        frames = f["env/cam1_video/frames"]
        assert frames.ndim == 1 and frames.dtype == np.uint8
        assert tuple(frames.attrs["shape"]) == (H, W, 3) and frames.attrs["T"] == T
        assert frames.attrs["image_format"] == "RGB"
        assert bytes(frames[4:8]) == b"ftyp"  # a real MP4 container
        assert f["env/state"].shape == (T, 5) and f["policy/actions"].shape == (T - 1, 4)
        assert f["env/high_bound"].shape == (T, 5) and "misc" in f
        assert set(rn.MANDATORY_METADATA) <= set(f["metadata"].attrs)
    jpath = tmp_path / "traj_jpeg.hdf5"
    make_file(jpath, encoding="jpeg", n_cams=1)
    with h5py.File(jpath, "r") as f:
        assert f["env"].attrs["cam_encoding"] == "jpeg"
        assert sorted(f["env/cam0_video"].keys(), key=lambda k: int(k[5:])) == [f"frame{t}" for t in range(T)]
        assert bytes(f["env/cam0_video/frame0"][:2]) == b"\xff\xd8"  # JPEG SOI marker


def test_jpeg_rgb_tag_follows_public_loader_convention(tmp_path):
    """A JPEG tagged 'RGB' holds channels as an OpenCV (BGR-native) decode would return them; files written by
    RoboNet's jpg converter use cam_encoding 'jpg'."""
    path = tmp_path / "traj.hdf5"
    make_file(path, encoding="jpeg", n_cams=1)
    with h5py.File(path, "r+") as f:
        f["env"].attrs["cam_encoding"] = "jpg"
        group = f["env/cam0_video"]
        for t in range(T):
            rgb = robonet_io.decode_jpeg(group[f"frame{t}"][()])
            del group[f"frame{t}"]
            ds = group.create_dataset(f"frame{t}", data=robonet_io.encode_jpeg(np.ascontiguousarray(rgb[..., ::-1])))
            ds.attrs["shape"] = rgb.shape
            ds.attrs["image_format"] = "RGB"
    traj = rn.read_trajectory(path)
    assert traj.metadata["img_encoding"] == "jpeg"
    assert int(np.argmax(traj.images[:, 0, 2:6, 2:6].reshape(-1, 3).mean(0))) == 0  # red patch still red


def test_steps_is_min_of_state_image_action_plus_one(tmp_path):
    path = tmp_path / "traj.hdf5"
    make_file(path, encoding="jpeg", n_cams=1)
    with h5py.File(path, "r+") as f:  # 3 extra states, 2 fewer actions -> steps = (T - 1 - 2) + 1
        state = f["env/state"][()]
        del f["env/state"]
        f["env"].create_dataset("state", data=np.concatenate([state, state[:3]]))
        actions = f["policy/actions"][()]
        del f["policy/actions"]
        f["policy"].create_dataset("actions", data=actions[:-2])
    m = rn.read_file_metadata(path)
    assert (m["state_T"], m["img_T"], m["action_T"], m["steps"]) == (T + 3, T, T - 3, T - 2)
    traj = rn.read_trajectory(path)
    assert traj.images.shape[0] == T - 2 and traj.states.shape[0] == T - 2 and traj.actions.shape[0] == T - 3


def test_mp4_backends_decode_bytes_identically():
    video = smooth_video(6, 1, 0)[:, 0]
    data = robonet_io.encode_mp4(video)
    frames = robonet_io.decode_mp4(data, backend="ffmpeg")  # temp file + ffmpeg binary, no BytesIO
    assert frames.shape == video.shape and np.abs(frames.astype(np.float32) - video).mean() < 6
    assert robonet_io.decode_mp4(data, max_frames=3, backend="ffmpeg").shape[0] == 3
    if robonet_io._have_pyav():
        np.testing.assert_array_equal(robonet_io.decode_mp4(data, backend="pyav"), frames)
        assert robonet_io.decode_mp4(data, max_frames=3, backend="pyav").shape[0] == 3
    for backend in ("ffmpeg", "pyav") if robonet_io._have_pyav() else ("ffmpeg",):
        with pytest.raises(ValueError, match="cannot decode MP4"):
            robonet_io.decode_mp4(data[:40], backend=backend)
    with pytest.raises(ValueError, match="even"):
        robonet_io.encode_mp4(np.zeros((2, 5, 6, 3), np.uint8))


# ---------------------------------------------------------------------------------------------- errors


def test_truncated_file_error_names_it_and_index_skips_it(folder):
    bad = folder / "sawyer_traj0.hdf5"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(rn.RoboNetFileError, match="sawyer_traj0.hdf5"):
        rn.read_file_metadata(bad)
    with pytest.raises(rn.RoboNetFileError, match="sawyer_traj0.hdf5"):
        rn.read_trajectory(bad)
    with pytest.warns(UserWarning, match="sawyer_traj0.hdf5"):
        index = rn.RoboNetIndex.build(folder, progress=False)
    assert "sawyer_traj0.hdf5" not in index and len(index) == 3
    assert "sawyer_traj0.hdf5" in index.skipped


@pytest.mark.parametrize("backend", ["ffmpeg", "pyav"])
def test_corrupt_video_stream_error_names_file(folder, monkeypatch, backend):
    if backend == "pyav" and not robonet_io._have_pyav():
        pytest.skip("PyAV not installed")
    monkeypatch.setattr(robonet_io, "_have_pyav", lambda: backend == "pyav")
    path = folder / "widowx_traj1.hdf5"
    with h5py.File(path, "r+") as f:
        ds = f["env/cam0_video/frames"]
        junk = np.frombuffer(np.random.default_rng(0).bytes(ds.shape[0]), np.uint8)
        ds[64:] = junk[64:]  # keep the first bytes, destroy the stream
    with pytest.raises(rn.RoboNetFileError, match="widowx_traj1.hdf5"):
        rn.read_trajectory(path)
    assert "widowx_traj1.hdf5" in rn.RoboNetIndex.build(folder, progress=False, cache=False)  # header is fine
    with pytest.warns(UserWarning, match="widowx_traj1.hdf5"):
        index = rn.RoboNetIndex.build(folder, progress=False, cache=False, verify_streams=True)
    assert "widowx_traj1.hdf5" not in index and len(index) == 3
    full = rn.RoboNetIndex.build(folder, progress=False, cache=False)
    ds = rn.RoboNetClipDataset(index=full.select(["widowx_traj1.hdf5", "sawyer_traj2.hdf5"]), skip_corrupt=True)
    with pytest.warns(UserWarning, match="widowx_traj1.hdf5"):
        assert ds[0]["file"] == "sawyer_traj2.hdf5"
    with pytest.raises(rn.RoboNetFileError, match="widowx_traj1.hdf5"):
        rn.RoboNetClipDataset(index=full.select(["widowx_traj1.hdf5"]))[0]


# ---------------------------------------------------------------------------------------------- index


def test_index_cache_rebuild_on_change(folder, monkeypatch):
    index = rn.RoboNetIndex.build(folder, progress=False)
    assert len(index) == 4 and (folder / rn.INDEX_FILENAME).exists()
    row = index["widowx_traj1.hdf5"]
    assert (row["robot"], row["adim"], row["ncam"], row["img_encoding"], row["steps"]) == ("widowx", 5, 2, "mp4", T)
    assert len(row["sha256"]) == 64

    calls = []
    real = robonet_index.read_file_metadata
    monkeypatch.setattr(robonet_index, "read_file_metadata", lambda p, **k: calls.append(p) or real(p, **k))
    again = rn.RoboNetIndex.build(folder, progress=False)
    assert calls == [] and again.rows == index.rows  # served from the cache

    make_file(folder / "widowx_traj1.hdf5", robot="kuka", adim=4, encoding="jpeg", seed=9)  # changed file
    make_file(folder / "new_traj.hdf5", robot="baxter", seed=5)  # new file
    os.remove(folder / "franka_traj3.hdf5")  # deleted file
    rebuilt = rn.RoboNetIndex.build(folder, progress=False)
    assert sorted(os.path.basename(p) for p in calls) == ["new_traj.hdf5", "widowx_traj1.hdf5"]
    assert rebuilt["widowx_traj1.hdf5"]["robot"] == "kuka" and rebuilt["widowx_traj1.hdf5"]["img_encoding"] == "jpeg"
    assert "franka_traj3.hdf5" not in rebuilt and "new_traj.hdf5" in rebuilt


def test_index_verify_hash_catches_same_size_same_mtime_change(folder):
    index = rn.RoboNetIndex.build(folder, progress=False)
    path = folder / "sawyer_traj0.hdf5"
    st = path.stat()
    with h5py.File(path, "r+") as f:
        offset = f["env/state"].id.get_offset()
    with open(path, "r+b") as fh:  # flip state bytes in place: same size
        fh.seek(offset)
        b = fh.read(4)
        fh.seek(offset)
        fh.write(bytes(x ^ 0xFF for x in b))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = rn.RoboNetIndex.build(folder, progress=False)
    assert stale["sawyer_traj0.hdf5"]["sha256"] == index["sawyer_traj0.hdf5"]["sha256"]
    fresh = rn.RoboNetIndex.build(folder, progress=False, verify_hash=True)
    assert fresh["sawyer_traj0.hdf5"]["sha256"] != index["sawyer_traj0.hdf5"]["sha256"]
    with pytest.raises(rn.RoboNetFileError, match="hash"):
        rn.read_trajectory(path, metadata=stale["sawyer_traj0.hdf5"], verify_hash=True)


def test_index_filters_and_split_selection(folder, tmp_path_factory):
    index = rn.RoboNetIndex.build(folder, progress=False)
    assert index.filter(robot="sawyer").files == ["sawyer_traj0.hdf5", "sawyer_traj2.hdf5"]
    assert set(index.filter(adim=5).files) == {"widowx_traj1.hdf5", "franka_traj3.hdf5"}
    assert index.filter(robot=["sawyer", "franka"], encoding="jpeg").files == ["franka_traj3.hdf5", "sawyer_traj2.hdf5"]
    assert len(index.filter(camera=1)) == 4 and len(index.filter(camera=2)) == 0
    assert len(index.filter(min_steps=T + 1)) == 0
    split = tmp_path_factory.mktemp("split") / "test.txt"
    split.write_text("# test list\n/some/where/widowx_traj1.hdf5\nsawyer_traj0.hdf5\n\n")
    names = rn.read_split_file(split)
    assert names == ["widowx_traj1.hdf5", "sawyer_traj0.hdf5"]
    assert index.select(names).files == names  # list order kept
    assert len(index.exclude(names)) == 2
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        index.select(names + ["missing.hdf5"])
    with pytest.warns(UserWarning):
        assert len(index.select(names + ["missing.hdf5"], strict=False)) == 2


# ---------------------------------------------------------------------------------------------- harmonisation


def test_harmonise_autograsp_imputation_and_pad_cut():
    states = np.zeros((5, 5), np.float32)
    states[:, -1] = [0.0, 0.9, -0.7, 0.05, -0.05]  # gripper; bounds (-1, 1) -> midpoint 0
    a4 = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = rn.harmonise_actions(a4, target_adim=5, states=states, primitives="autograsp",
                               low_bound=[0, 0, 0, 0, -1.0], high_bound=[0, 0, 0, 0, 1.0])
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out[:, :4], a4)
    np.testing.assert_array_equal(out[:, 4], [1.0, -1.0, 1.0, -1.0])  # from states[1:, -1]
    # midpoint of asymmetric bounds: (0 + 0.2) / 2 = 0.1 -> 0.05 counts as closed (low)
    out2 = rn.harmonise_actions(a4, target_adim=5, states=states, primitives="autograsp",
                                low_bound=[0.0], high_bound=[0.2])
    np.testing.assert_allclose(out2[:, 4], [0.2, 0.0, 0.0, 0.0])
    # not autograsp -> zero pad; imputation off -> zero pad
    np.testing.assert_array_equal(rn.harmonise_actions(a4, target_adim=5, primitives="none")[:, 4], 0)
    np.testing.assert_array_equal(
        rn.harmonise_actions(a4, target_adim=5, primitives="autograsp", impute_autograsp=False)[:, 4], 0)
    a5 = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(rn.harmonise_actions(a5, target_adim=4), a5[:, :4])  # xyz + theta
    np.testing.assert_array_equal(rn.harmonise_actions(a5, target_adim=5), a5)
    assert rn.harmonise_actions(a4[:, :3], target_adim=4).shape == (4, 4)
    with pytest.raises(ValueError, match="states"):
        rn.harmonise_actions(a4, target_adim=5, primitives="autograsp")
    assert rn.harmonisation_rule(4, 5, "autograsp") == "autograsp" and rn.harmonisation_rule(5, 4, None) == "cut"


def test_clips_harmonised_across_4d_and_5d_robots(folder):
    # gripper state alternates open/closed so the imputed column is known
    states = np.zeros((T, 5), np.float32)
    states[:, -1] = np.where(np.arange(T) % 2 == 0, 1.0, -1.0)
    make_file(folder / "sawyer_traj0.hdf5", adim=4, primitives="autograsp", states=states, seed=0)
    index = rn.RoboNetIndex.build(folder, progress=False)
    for target in (4, 5):
        ds = rn.RoboNetClipDataset(index=index, target_adim=target)
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
        assert batch["frames"].shape == (4, 12, 3, 64, 64) and batch["actions"].shape == (4, 11, target)
        assert batch["states"].shape == (4, 12, 5)
        assert 0.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
    clip = rn.load_clip(folder / "sawyer_traj0.hdf5", target_adim=5)
    # bounds gripper (-1, 1): next state +1 at odd t+1 even -> high
    expected = np.where((np.arange(11) + 1) % 2 == 0, 1.0, -1.0)
    np.testing.assert_array_equal(clip["actions"][:, 4].numpy(), expected)
    clip5 = rn.load_clip(folder / "widowx_traj1.hdf5", target_adim=4)
    raw = rn.read_trajectory(folder / "widowx_traj1.hdf5").actions
    np.testing.assert_array_equal(clip5["actions"].numpy(), raw[:11, :4])


# ---------------------------------------------------------------------------------------------- clips


def test_standard_test_clips_follow_split_list(folder):
    split = folder / "test_list.txt"
    rn.write_split_file(split, ["widowx_traj1.hdf5", "sawyer_traj2.hdf5"])
    ds = rn.standard_test_clips(folder, split)
    assert [r["file"] for r in ds.rows] == ["widowx_traj1.hdf5", "sawyer_traj2.hdf5"]
    item = ds[1]
    assert item["frames"].shape == (12, 3, 64, 64) and item["actions"].shape == (11, 4) and item["start"] == 0
    ref = rn.read_trajectory(folder / "sawyer_traj2.hdf5", image_size=(64, 64), num_steps=12)
    np.testing.assert_allclose(item["frames"].permute(0, 2, 3, 1).numpy(), ref.images[:, 0] / 255.0, atol=1e-6)
    batches = list(rn.iter_clip_batches(ds, batch_size=2))
    assert len(batches) == 1 and batches[0]["file"] == ["widowx_traj1.hdf5", "sawyer_traj2.hdf5"]


def test_clip_256_and_random_windows_are_seeded(folder):
    index = rn.RoboNetIndex.build(folder, progress=False)
    big = rn.RoboNetClipDataset(index=index.select(["sawyer_traj2.hdf5"]), image_size=256, future_frames=2)
    assert big[0]["frames"].shape == (4, 3, 256, 256)
    ds = rn.RoboNetClipDataset(index=index, context_frames=2, future_frames=3, random_start=True,
                               camera="random", seed=3)
    windows0 = [ds.window(i) for i in range(len(ds))]
    assert windows0 == [ds.window(i) for i in range(len(ds))]
    ds.set_epoch(1)
    windows1 = [ds.window(i) for i in range(len(ds))]
    assert windows0 != windows1
    assert all(0 <= s <= T - 5 and c in (0, 1) for s, c in windows0 + windows1)
    item = ds[0]
    assert item["start"] == windows1[0][0] and item["camera"] == windows1[0][1]
    with pytest.warns(UserWarning, match="shorter"):
        with pytest.raises(ValueError):
            rn.RoboNetClipDataset(index=index, future_frames=T)


def test_convert_to_library_episodes_and_clip_dataset(folder, tmp_path_factory):
    from foresight.data.clips import ClipDataset
    from foresight.data.episodes import EpisodeDataset

    index = rn.RoboNetIndex.build(folder, progress=False)
    out = tmp_path_factory.mktemp("episodes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = rn.convert_to_episodes(index, out, image_size=32, target_adim=5,
                                        test_files=["franka_traj3.hdf5"], progress=False)
    assert counts == {"written": 4, "skipped_existing": 0, "failed": 0}
    assert rn.convert_to_episodes(index, out, image_size=32, target_adim=5, progress=False)["skipped_existing"] == 4
    train, test = EpisodeDataset(out, split="train"), EpisodeDataset(out, split="test")
    assert len(train) == 3 and len(test) == 1 and test[0]["task"] == "franka"
    ep = train[0]
    assert ep["frames"].shape == (T, 32, 32, 3) and ep["actions"].shape == (T - 1, 5) and ep["states"].shape == (T, 5)
    clips = ClipDataset(train, context=2, future=10)
    batch = clips.get_batch([0, 1])
    assert batch["frames"].shape == (2, 12, 3, 32, 32) and batch["actions"].shape == (2, 11, 5)


def test_convert_script_on_synthetic_files(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from foresight.data.episodes import EpisodeDataset

    script = Path(__file__).resolve().parents[1] / "experiments" / "convert_robonet.py"
    spec = importlib.util.spec_from_file_location("convert_robonet", script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["convert_robonet"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    split = tmp_path / "test.txt"
    split.write_text("sawyer_traj0.hdf5\n")
    result = mod.main(["--robonet-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "eps"), "--synthetic", "3",
                       "--image-size", "16", "--test-list", str(split), "--target-adim", "5", "--workers", "1"])
    assert result["written"] == 3 and result["test_files"] == 1
    test = EpisodeDataset(tmp_path / "eps", split="test")
    assert len(test) == 1 and test[0]["frames"].shape == (30, 16, 16, 3) and test[0]["actions"].shape == (29, 5)
    # synthetic widowx files record 5-D actions whose gripper entry is the next gripper state
    widowx = rn.read_trajectory(tmp_path / "raw" / "widowx_traj1.hdf5")
    np.testing.assert_array_equal(widowx.actions[:, 4], widowx.states[1:, 4])


def test_world_model_trains_on_robonet_batches(folder):
    from foresight.models.baselines import ConvPredictor, ConvPredictorConfig

    index = rn.RoboNetIndex.build(folder, progress=False)
    ds = rn.RoboNetClipDataset(index=index, image_size=16, future_frames=3, target_adim=5)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    model = ConvPredictor(ConvPredictorConfig(image_size=16, action_dim=5, context_frames=2, future_frames=3,
                                              channels=8, levels=2, latent_channels=16))
    loss, logs = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    pred = model.predict(batch["frames"][:, :2], batch["actions"][:, 1:])  # actions[:, 1] acts on context frame 1
    assert pred.shape == (4, 1, 3, 3, 16, 16)
