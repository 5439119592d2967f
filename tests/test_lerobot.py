"""LeRobot v2.1 / v3.0 folders (foresight.data.lerobot): reading, clips equal to the store's, the v3.0 exporter's round
trip, the errors on bad folders, and a world model that trains to the same loss curve on either format.

The folders here are made by `write_v21` / `write_v30` below, a small writer of the documented layout written
independently of `write_lerobot`, so the reader is checked against the layout rather than against itself.
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

from experiments.common import DataConfig, UsageError, build_clip_datasets, data_format  # noqa: E402
from foresight.config import preset  # noqa: E402
from foresight.data.clips import ClipDataset  # noqa: E402
from foresight.data.episodes import EpisodeDataset, EpisodeWriter  # noqa: E402
from foresight.data.lerobot import (  # noqa: E402
    LeRobotEpisodes, LeRobotFormatError, lerobot_clips)
from foresight.data.lerobot_export import write_lerobot  # noqa: E402
from foresight.data.robonet_io import resize_frames  # noqa: E402
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig  # noqa: E402
from foresight.train import TrainConfig, Trainer  # noqa: E402

CAM = "observation.images.top"
FPS = 10
H = W = 16
A, S = 4, 5
TASKS = ["push the block", "reach the goal"]
# H.264 (yuv420p, crf 10) on these 16x16 frames with a coloured square: mean |error| per frame up to ~4 of 255
# (chroma subsampling at the square's edges); a frame from the wrong time is >= 12 off on its whole background
# (the background level encodes the frame index), so the tolerance also catches an off-by-one frame.
MEAN_ABS_TOL = 5.0


def make_episodes(n=5, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n):
        T = 10 + e
        frames = np.empty((T, H, W, 3), np.uint8)
        for t in range(T):
            frames[t] = 20 + 12 * ((t + 3 * e) % 16)  # background level: which frame this is
            y, x = 2 + (t + e) % 8, 3 + t % 6
            frames[t, y:y + 6, x:x + 6] = (180, 150, 90)
        eps.append({"frames": frames, "actions": rng.standard_normal((T - 1, A)).astype(np.float32),
                    "states": rng.standard_normal((T, S)).astype(np.float32), "task": TASKS[e % 2],
                    "split": "test" if e == n - 1 else "train"})
    return eps


# ------------------------------------------------------------------------------------------ a layout writer


def encode_mp4(path, frames, crf=10, gop=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=FPS, options={"crf": str(crf), "g": str(gop)})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = k
            c.mux(s.encode(vf))
        c.mux(s.encode(None))


def png(frame):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def frame_table(eps, first_episode, first_index, images=False):
    """Rows of consecutive episodes: one action per frame (the last one zero), variable-length list columns."""
    cols = {k: [] for k in ("action", "observation.state", "timestamp", "frame_index", "episode_index", "index",
                            "task_index")}
    if images:
        cols[CAM] = []
    index = first_index
    for k, ep in enumerate(eps):
        T = len(ep["frames"])
        act = np.concatenate([ep["actions"], np.zeros((1, A), np.float32)])
        for t in range(T):
            cols["action"].append(act[t].tolist())
            cols["observation.state"].append(ep["states"][t].tolist())
            cols["timestamp"].append(t / FPS)
            cols["frame_index"].append(t)
            cols["episode_index"].append(first_episode + k)
            cols["index"].append(index)
            cols["task_index"].append(TASKS.index(ep["task"]))
            if images:
                cols[CAM].append({"bytes": png(ep["frames"][t]), "path": None})
            index += 1
    types = {"action": pa.list_(pa.float32()), "observation.state": pa.list_(pa.float32()),
             "timestamp": pa.float32(), "frame_index": pa.int64(), "episode_index": pa.int64(), "index": pa.int64(),
             "task_index": pa.int64(), CAM: pa.struct([("bytes", pa.binary()), ("path", pa.string())])}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})


def info_json(version, eps, camera_dtype, data_path, video_path, chunks_size=1000):
    n_train = sum(e["split"] == "train" for e in eps)
    return {"codebase_version": version, "robot_type": None, "total_episodes": len(eps),
            "total_frames": sum(len(e["frames"]) for e in eps), "total_tasks": len(TASKS),
            "chunks_size": chunks_size, "fps": FPS, "splits": {"train": f"0:{n_train}", "test": f"{n_train}:{len(eps)}"},
            "data_path": data_path, "video_path": video_path,
            "features": {CAM: {"dtype": camera_dtype, "shape": [H, W, 3], "names": ["height", "width", "channels"]},
                         "observation.images.wrist": {"dtype": camera_dtype, "shape": [H, W, 3], "names": None},
                         "action": {"dtype": "float32", "shape": [A], "names": None},
                         "observation.state": {"dtype": "float32", "shape": [S], "names": None},
                         **{k: {"dtype": d, "shape": [1], "names": None} for k, d in (
                             ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                             ("index", "int64"), ("task_index", "int64"))}}}


def write_v21(root, eps, images=False):
    """v2.1: one parquet (and one MP4 per camera) per episode, chunks of 2 episodes (so chunk-001 exists too)."""
    root = Path(root)
    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video_path = None if images else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v2.1", eps, "image" if images else "video",
                                                                  data_path, video_path, chunks_size=2)))
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(
        {"episode_index": e, "tasks": [ep["task"]], "length": len(ep["frames"])}) + "\n" for e, ep in enumerate(eps)))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    index = 0
    for e, ep in enumerate(eps):
        keys = dict(episode_chunk=e // 2, episode_index=e)
        path = root / data_path.format(**keys)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_table([ep], e, index, images=images), path)
        index += len(ep["frames"])
        if not images:
            for cam in (CAM, "observation.images.wrist"):
                encode_mp4(root / video_path.format(video_key=cam, **keys), ep["frames"])
    return root


def write_v30(root, eps):
    """v3.0: all episodes in one MP4 per camera; frame tables split over two parquet files."""
    root = Path(root)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_path = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v3.0", eps, "video", data_path, video_path)))
    all_frames = np.concatenate([ep["frames"] for ep in eps])
    for cam in (CAM, "observation.images.wrist"):
        encode_mp4(root / video_path.format(video_key=cam, chunk_index=0, file_index=0), all_frames)
    groups = [(0, list(range(0, 3))), (1, list(range(3, len(eps))))]
    rows, index, start = [], 0, 0
    for file_index, members in groups:
        path = root / data_path.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_table([eps[e] for e in members], members[0], index), path)
        for e in members:
            T = len(eps[e]["frames"])
            row = {"episode_index": e, "tasks": [eps[e]["task"]], "length": T, "data/chunk_index": 0,
                   "data/file_index": file_index, "dataset_from_index": index, "dataset_to_index": index + T}
            for cam in (CAM, "observation.images.wrist"):
                row.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": 0,
                            f"videos/{cam}/from_timestamp": start / FPS, f"videos/{cam}/to_timestamp": (start + T) / FPS})
            rows.append(row)
            index, start = index + T, start + T
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": list(range(len(TASKS))), "task": TASKS}), root / "meta" / "tasks.parquet")
    return root


def write_store(root, eps):
    w = EpisodeWriter(root, meta={"image_size": H})
    for v, ep in enumerate(eps):
        w.write({k: ep[k] for k in ("frames", "actions", "states")}, task=ep["task"], variation=v, split=ep["split"])
    return Path(root)


@pytest.fixture(scope="module")
def eps():
    return make_episodes()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, eps):
    base = tmp_path_factory.mktemp("lerobot")
    return {"v21": write_v21(base / "v21", eps), "v21_images": write_v21(base / "v21_images", eps, images=True),
            "v30": write_v30(base / "v30", eps), "store": write_store(base / "store", eps)}


def assert_episodes_match(ds, eps, *, exact_pixels):
    assert len(ds) == len(eps)
    for i, ep in enumerate(eps):
        got = ds[i]
        assert got["task"] == ep["task"] and got["split"] == ep["split"] and got["episode_index"] == i
        assert got["frames"].dtype == np.uint8 and got["frames"].shape == ep["frames"].shape
        assert got["actions"].dtype == np.float32 and np.array_equal(got["actions"], ep["actions"])  # bit-identical
        assert np.array_equal(got["states"], ep["states"])
        err = np.abs(got["frames"].astype(np.int16) - ep["frames"])
        if exact_pixels:
            assert err.max() == 0
        else:
            per_frame = err.reshape(len(err), -1).mean(1)
            assert per_frame.max() < MEAN_ABS_TOL, per_frame


# ------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("name", ["v21", "v30"])
def test_video_folders_read_as_episodes(folders, eps, name):
    ds = LeRobotEpisodes(folders[name], camera="top")  # short camera name
    assert ds.camera == CAM and ds.version == ("v2.1" if name == "v21" else "v3.0")
    assert [r.length for r in ds.records] == [len(e["frames"]) for e in eps]
    assert ds.task_names == sorted(TASKS)
    assert_episodes_match(ds, eps, exact_pixels=False)


def test_image_folder_is_pixel_exact(folders, eps):
    assert_episodes_match(LeRobotEpisodes(folders["v21_images"]), eps, exact_pixels=True)


def test_v30_random_access_seeks_to_the_same_frames(folders):
    forward = LeRobotEpisodes(folders["v30"])
    frames = [forward[i]["frames"] for i in range(len(forward))]
    backward = LeRobotEpisodes(folders["v30"])
    for i in (4, 1, 3, 0, 2, 2):
        assert np.array_equal(backward[i]["frames"], frames[i]), i


def test_splits_tasks_resize_and_action_width(folders, eps):
    root = folders["v21_images"]
    assert [r.episode_index for r in LeRobotEpisodes(root, split="test").records] == [4]
    assert {r.task for r in LeRobotEpisodes(root, tasks=[TASKS[1]]).records} == {TASKS[1]}
    small = LeRobotEpisodes(root, image_size=8)[2]["frames"]
    assert np.array_equal(small, resize_frames(eps[2]["frames"], (8, 8)))
    padded = LeRobotEpisodes(root, action_dim=6)[1]["actions"]
    assert padded.shape == (len(eps[1]["actions"]), 6)
    assert np.array_equal(padded[:, :A], eps[1]["actions"]) and not padded[:, A:].any()
    assert np.array_equal(LeRobotEpisodes(root, action_dim=2)[1]["actions"], eps[1]["actions"][:, :2])


def test_clips_equal_those_of_the_store(folders):
    kw = dict(context=1, future=3, stride=2, window_step=1, task_names=sorted(TASKS))
    ours = lerobot_clips(folders["v21_images"], split="train", **kw)
    store = ClipDataset(EpisodeDataset(folders["store"], split="train"), **kw)
    assert len(ours) == len(store) > 0
    idx = np.arange(len(store))
    a, b = ours.get_batch(idx), store.get_batch(idx)
    assert sorted(a) == sorted(b) == ["actions", "episode", "frames", "start", "states", "task"]
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k
    assert a["frames"].shape == (len(idx), 4, 3, H, W) and a["actions"].shape == (len(idx), 3, 2 * A)


# ------------------------------------------------------------------------------------------ export


def test_export_round_trip(tmp_path, folders, eps):
    out = write_lerobot(folders["store"], tmp_path / "lr", fps=FPS, camera_key=CAM)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["splits"] == {"train": "0:4", "test": "4:5"}
    assert info["total_frames"] == sum(len(e["frames"]) for e in eps)
    videos = list((out / "videos" / CAM).glob("chunk-*/file-*.mp4"))
    assert len(videos) == 1  # every episode packed into one file, found by from/to timestamps
    ep_table = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    assert ep_table[f"videos/{CAM}/from_timestamp"][1] == len(eps[0]["frames"]) / FPS
    assert pq.read_table(out / "meta" / "tasks.parquet").column("task").to_pylist() == [TASKS[0], TASKS[1]]
    back = LeRobotEpisodes(out)
    assert_episodes_match(back, eps, exact_pixels=False)
    lossless = LeRobotEpisodes(write_lerobot(folders["store"], tmp_path / "lossless", fps=FPS, lossless=True))
    assert_episodes_match(lossless, eps, exact_pixels=True)


def test_export_is_atomic(tmp_path, eps):
    out = write_lerobot(eps, tmp_path / "lr", fps=FPS)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_lerobot(eps, out)
    bad = [eps[0], dict(eps[1], frames=eps[1]["frames"][:, :8])]  # second episode of another size
    with pytest.raises(ValueError, match="episode 1 has frames"):
        write_lerobot(bad, tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr"]  # no partial folder, no temporary left


def test_export_command(tmp_path, folders, capsys):
    from experiments import export_lerobot

    out = export_lerobot.main(["--src", str(folders["store"]), "--out", str(tmp_path / "lr"), "--lossless"])
    assert "wrote 5 episodes" in capsys.readouterr().out
    assert_episodes_match(LeRobotEpisodes(out), make_episodes(), exact_pixels=True)
    with pytest.raises(UsageError, match="exists"):
        export_lerobot.main(["--src", str(folders["store"]), "--out", str(out)])


# ------------------------------------------------------------------------------------------ bad folders


def copy(folders, name, tmp_path):
    return Path(shutil.copytree(folders[name], tmp_path / name))


def test_missing_info_json(tmp_path, folders):
    root = copy(folders, "v21", tmp_path)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(LeRobotFormatError, match=r"meta/info\.json: file is missing; expected a LeRobot"):
        LeRobotEpisodes(root)
    with pytest.raises(LeRobotFormatError, match="folder does not exist"):
        LeRobotEpisodes(tmp_path / "nowhere")


def test_unsupported_codebase_version(tmp_path, folders):
    root = copy(folders, "v21", tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps(dict(info, codebase_version="v1.6")))
    with pytest.raises(LeRobotFormatError, match=r"info\.json: codebase_version 'v1\.6' is not supported; expected "
                                                 r"one of \['v2\.0', 'v2\.1', 'v3\.0'\]"):
        LeRobotEpisodes(root)


def test_missing_feature_keys_list_the_ones_there(folders):
    with pytest.raises(LeRobotFormatError, match=r"camera 'front' is not a feature .* camera keys are "
                                                 r"\['observation.images.top', 'observation.images.wrist'\]"):
        LeRobotEpisodes(folders["v30"], camera="front")
    with pytest.raises(LeRobotFormatError, match=r"action key 'actions' is not a feature .*'action'"):
        LeRobotEpisodes(folders["v30"], action_key="actions")


@pytest.mark.parametrize("name", ["v21", "v30"])
def test_video_shorter_than_its_frame_table(tmp_path, folders, eps, name):
    root = copy(folders, name, tmp_path)
    if name == "v21":
        video = root / "videos" / "chunk-000" / CAM / "episode_000001.mp4"
        encode_mp4(video, eps[1]["frames"][:-3])
        which, n = 1, len(eps[1]["frames"])
    else:
        video = root / "videos" / CAM / "chunk-000" / "file-000.mp4"
        encode_mp4(video, np.concatenate([e["frames"] for e in eps])[:-2])  # the last episode loses 2 frames
        which, n = 4, len(eps[4]["frames"])
    ds = LeRobotEpisodes(root)
    with pytest.raises(LeRobotFormatError, match=rf"{video.name}: video is shorter than its frame table: episode "
                                                 rf"{which} .* needs {n} frames .* has {n - (3 if name == 'v21' else 2)}"):
        for i in range(len(ds)):
            ds[i]


@pytest.mark.parametrize("which", ["data", "episodes"])
def test_truncated_parquet(tmp_path, folders, which):
    root = copy(folders, "v30", tmp_path)
    path = root / ("data/chunk-000/file-001.parquet" if which == "data" else "meta/episodes/chunk-000/file-000.parquet")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LeRobotFormatError, match=rf"{path.name}: cannot be read as parquet \(truncated"):
        LeRobotEpisodes(root)


def test_frame_table_disagreeing_with_episode_metadata(tmp_path, folders):
    root = copy(folders, "v21", tmp_path)
    path = root / "meta" / "episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["length"] += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LeRobotFormatError, match=r"episode_000002\.parquet: episode 2 has 12 rows .* says 13 frames"):
        LeRobotEpisodes(root)


# ------------------------------------------------------------------------------------------ training


def losses_of(train_set, run_dir):
    torch.manual_seed(0)
    model = ConvPredictor(preset(ConvPredictorConfig, "tiny"))  # 16x16, 1 + 3 frames, 4-D actions
    config = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1, eval_every=0, save_every=0,
                         progress=False, seed=3)
    Trainer(model, train_set, config=config, run_dir=run_dir).fit()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_world_model_trains_to_the_same_loss_curve_on_lerobot_and_store(tmp_path, folders):
    def datasets(root, fmt):
        return build_clip_datasets(DataConfig(root=str(root), format=fmt), context=1, future=3, image_size=H,
                                   action_dim=A)

    store_train, store_eval = datasets(folders["store"], "auto")
    lerobot_train, lerobot_eval = datasets(folders["v21_images"], "lerobot")
    exported = write_lerobot(folders["store"], tmp_path / "export", fps=FPS, lossless=True)
    export_train, _ = datasets(exported, "auto")  # auto: a folder with meta/info.json is LeRobot
    assert len(lerobot_train) == len(store_train) == len(export_train) and len(lerobot_eval) == len(store_eval)
    reference = losses_of(store_train, tmp_path / "store_run")
    assert len(reference) == 6 and reference[-1] < reference[0]
    assert losses_of(lerobot_train, tmp_path / "lerobot_run") == reference
    assert losses_of(export_train, tmp_path / "export_run") == reference


def test_data_config_errors(folders):
    assert data_format(DataConfig(root=str(folders["v30"]))) == "lerobot"
    assert data_format(DataConfig(root=str(folders["store"]))) == "store"
    assert data_format(DataConfig(root="synthetic")) == "synthetic"
    with pytest.raises(UsageError, match="data.format='parquet'"):
        data_format(DataConfig(format="parquet"))
    with pytest.raises(UsageError, match="4-D actions, the model expects 7-D .*harmonise_actions=true"):
        build_clip_datasets(DataConfig(root=str(folders["v30"])), context=1, future=3, image_size=8, action_dim=7)
    train, _ = build_clip_datasets(DataConfig(root=str(folders["v30"]), harmonise_actions=True, camera="wrist"),
                                   context=1, future=3, image_size=8, action_dim=7)
    batch = train.get_batch([0])
    assert batch["frames"].shape == (1, 4, 3, 8, 8) and batch["actions"].shape == (1, 3, 7)
    with pytest.raises(UsageError, match="camera 'front' is not a feature"):
        build_clip_datasets(DataConfig(root=str(folders["v30"]), camera="front"), context=1, future=3,
                            image_size=8, action_dim=4)
