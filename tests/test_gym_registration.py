"""gymnasium registration of the Meta-World image env (envs/registration.py) and the installed commands
(``[project.scripts]`` in pyproject.toml -> foresight/cli.py)."""

import ast
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"foresight-train": "train_world_model", "foresight-eval": "eval_prediction",
            "foresight-plan": "plan_to_goal", "foresight-collect": "collect_metaworld", "foresight-mt50": "mt50_bc",
            "foresight-export-lerobot": "export_lerobot"}


@pytest.fixture(scope="module")
def gym():
    pytest.importorskip("metaworld")
    import gymnasium

    import envs  # noqa: F401  (registers foresight/MetaWorld-v0)

    return gymnasium


@pytest.mark.mujoco
@pytest.mark.parametrize("task", ["reach-v3", "push-v3"])
def test_make_has_a_spec_and_passes_check_env(gym, task):
    from gymnasium.utils.env_checker import check_env

    from envs.metaworld import MetaWorldImageEnv
    from envs.registration import METAWORLD_ID

    env = gym.make(METAWORLD_ID, task=task, image_size=16, max_steps=20)
    try:
        assert isinstance(env.unwrapped, MetaWorldImageEnv) and env.unwrapped.task_name == task
        assert env.spec.id == "foresight/MetaWorld-v0" and env.spec.namespace == "foresight"
        assert env.spec.kwargs["task"] == task and env.spec.kwargs["image_size"] == 16
        assert env.unwrapped.spec is not None and env.render_mode == "rgb_array"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        messages = [str(w.message) for w in caught]
        assert not [m for m in messages if "spec" in m], messages
        obs, info = env.reset(seed=3)
        assert obs["image"].shape == (16, 16, 3) and obs["image"].dtype == np.uint8 and obs["state"].shape == (39,)
        assert info["variation_seed"] == 3
    finally:
        env.close()
    with pytest.raises(ValueError, match="renders only 'rgb_array'"):
        gym.make(METAWORLD_ID, task=task, image_size=16, render_mode="ansi")


@pytest.mark.mujoco
def test_make_vec(gym):
    vec = gym.make_vec("foresight/MetaWorld-v0", num_envs=2, vectorization_mode="sync", task="reach-v3",
                       image_size=16, max_steps=20)
    try:
        obs, info = vec.reset(seed=5)  # sub-env i gets seed 5 + i: variations 5 and 6
        assert obs["image"].shape == (2, 16, 16, 3) and obs["state"].shape == (2, 39)
        assert list(info["variation_seed"]) == [5, 6]
        assert not np.array_equal(obs["state"][0], obs["state"][1])
        obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 4), np.float32))
        assert reward.shape == (2,) and not terminated.any() and not truncated.any()
    finally:
        vec.close()


class _ImageSequenceClip:
    """moviepy's ImageSequenceClip as RecordVideo uses it (frames, fps -> write_videofile), written with PyAV."""

    def __init__(self, frames, fps):
        self.frames, self.fps = np.stack(frames), fps

    def write_videofile(self, path, logger=None):
        import av

        with av.open(path, "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=int(self.fps))
            s.width, s.height, s.pix_fmt = self.frames.shape[2], self.frames.shape[1], "yuv420p"
            for f in self.frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(s.encode(None))


@pytest.mark.mujoco
def test_record_video(gym, tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    try:
        import moviepy  # noqa: F401
    except ImportError:  # not installed here: RecordVideo's writer replaced by the same interface over PyAV
        fake = types.ModuleType("moviepy.video.io.ImageSequenceClip")
        fake.ImageSequenceClip = _ImageSequenceClip
        for name in ("moviepy", "moviepy.video", "moviepy.video.io"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, fake.__name__, fake)
    env = gym.wrappers.RecordVideo(gym.make("foresight/MetaWorld-v0", task="reach-v3", image_size=16, max_steps=6),
                                   str(tmp_path), episode_trigger=lambda e: True, disable_logger=True)
    env.reset(seed=0)
    truncated = False
    while not truncated:
        _, _, _, truncated, _ = env.step(env.action_space.sample())
    env.close()
    videos = sorted(tmp_path.glob("*.mp4"))
    assert [v.name for v in videos] == ["rl-video-episode-0.mp4"]
    with av.open(str(videos[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 7 and frames[0].shape == (16, 16, 3)  # the reset frame + 6 steps


def _first_doc_line(script: str) -> str:
    doc = ast.get_docstring(ast.parse((ROOT / "experiments" / f"{script}.py").read_text()))
    return doc.strip().splitlines()[0]


def test_installed_commands_answer_help():
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "FORESIGHT_DEBUG"}
    env.update(OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    for command, script in COMMANDS.items():
        exe = bindir / command
        assert exe.is_file(), f"{exe} is not installed: run `{bindir / 'pip'} install -e . --no-deps`"
        proc = subprocess.run([str(exe), "--help"], cwd="/", env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        assert proc.stdout.startswith("usage:"), (command, proc.stdout[:300])
        # the script's own --help: its docstring, run from outside the checkout
        assert _first_doc_line(script) in " ".join(proc.stdout.split()), (command, proc.stdout[:600])
        assert "Traceback" not in proc.stdout + proc.stderr
