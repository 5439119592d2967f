"""experiments/leaderboard.py end to end on tiny untrained models: synthetic clips and a tiny RoboNet folder
(FVD, LPIPS and the control check off: the frames are too small and the check needs MuJoCo time)."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from foresight.config import preset
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig
from foresight.registry import get_model_class

from experiments.common import UsageError
from experiments.leaderboard import main

OFF = ["fvd=false", "lpips=false", "control_check=false", "device=cpu", "threads=1"]


def _tiny_models(root: Path) -> dict[str, Path]:
    """A conv and a GHVAE at their tiny presets: 16x16 frames, 2 context + 3 future frames, 4-D actions."""
    torch.manual_seed(0)
    conv = ConvPredictor(replace(preset(ConvPredictorConfig, "tiny"), context_frames=2))
    ghvae_cls = get_model_class("ghvae")
    ghvae = ghvae_cls(preset(ghvae_cls.config_class, "tiny"))
    paths = {"conv": root / "conv" / "model", "ghvae": root / "ghvae" / "model"}
    conv.save_pretrained(paths["conv"])
    ghvae.save_pretrained(paths["ghvae"])
    for m in (conv, ghvae):
        assert (m.image_size, m.context_frames, m.future_frames, m.action_dim) == (16, 2, 3, 4)
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _tiny_models(tmp_path_factory.mktemp("models"))


def _models_arg(models: dict[str, Path]) -> str:
    return "models=[" + ",".join(f"{k}={v}" for k, v in models.items()) + "]"


def test_leaderboard_on_synthetic_clips(models, tmp_path):
    # a training record next to the conv model, as foresight.train.Trainer leaves it in the run directory
    state = models["conv"].parent / "all" / "checkpoints" / "000000020" / "training_state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "trainer.json").write_text(json.dumps({"step": 20, "stage": "all", "train_seconds": 1.5,
                                                    "finished": True, "train_config": {"batch_size": 4}}))
    last = models["conv"].parent / "all" / "checkpoints" / "last"
    if not last.exists():
        last.symlink_to("000000020")

    out = tmp_path / "board"
    report = main([_models_arg(models), "data_root=synthetic", "context=2", "future=3", "num_clips=4",
                   "num_samples=2", f"out={out}", *OFF])
    on_disk = json.loads((out / "leaderboard.json").read_text())
    assert on_disk["entries"] == json.loads(json.dumps(report["entries"]))
    names = [e["name"] for e in on_disk["entries"]]
    assert names == ["copy_last", "conv", "ghvae"]
    for e in on_disk["entries"]:
        assert e["status"] == "ok", e
        assert e["num_clips"] == 4 and e["num_samples"] == 2
        for k in ("psnr", "ssim"):
            assert math.isfinite(e["metrics"][k]["best"]) and math.isfinite(e["metrics"][k]["mean"])
            assert len(e["metrics"][k]["per_timestep_best"]) == 3
        assert e["sampling_seconds_per_clip"] >= 0
    by_name = {e["name"]: e for e in on_disk["entries"]}
    assert by_name["copy_last"]["parameters"] == 0 and by_name["conv"]["parameters"] > 0
    assert by_name["conv"]["training_budget"]["steps"] == 20
    assert by_name["conv"]["training_budget"]["train_seconds"] == 1.5
    assert by_name["ghvae"]["training_budget"] is None
    p = on_disk["protocol"]
    assert (p["num_clips"], p["num_samples"], p["context_frames"], p["future_frames"]) == (4, 2, 2, 3)
    assert p["fvd"]["enabled"] is False and p["fvd"]["include_context"] is True
    assert on_disk["command"].startswith("python experiments/leaderboard.py") and on_disk["date"]

    md = (out / "leaderboard.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| entry")]
    assert [r.split("|")[1].strip() for r in rows] == names
    assert "best-of-2" in md and "Protocol:" in md
    assert (out / "per_timestep.png").stat().st_size > 1000


def test_incompatible_model_is_skipped_not_fatal(tmp_path):
    torch.manual_seed(0)
    ConvPredictor(ConvPredictorConfig(image_size=16, channels=8, levels=2, latent_channels=16, context_frames=3,
                                      future_frames=3)).save_pretrained(tmp_path / "c3")
    report = main([f"models=wide={tmp_path / 'c3'}", "data_root=synthetic", "context=2", "future=3",
                   "num_clips=2", "num_samples=1", f"out={tmp_path / 'board'}", *OFF])
    wide = [e for e in report["entries"] if e["name"] == "wide"][0]
    assert wide["status"] == "skipped" and "3 context frames" in wide["skipped"]
    assert "| wide |" in (tmp_path / "board" / "leaderboard.md").read_text()


def test_user_errors_name_what_was_expected(models, tmp_path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(UsageError, match=str(missing)):
        main([f"models=gone={missing}", "data_root=synthetic", f"out={tmp_path}", *OFF])
    with pytest.raises(UsageError, match="expected name=path"):
        main([f"models={models['conv']}", "data_root=synthetic", f"out={tmp_path}", *OFF])
    with pytest.raises(UsageError, match="manifest"):
        main(["data_root=" + str(tmp_path / "no_store"), f"out={tmp_path}", *OFF])


def test_leaderboard_on_robonet_files(models, tmp_path):
    from foresight.data.robonet import write_synthetic_trajectories

    write_synthetic_trajectories(tmp_path / "robonet", 3, steps=8, frame_size=(24, 32))
    out = tmp_path / "board"
    report = main([f"models=conv={models['conv']}", f"robonet_dir={tmp_path / 'robonet'}", "image_size=16",
                   "context=2", "future=3", "num_samples=1", f"out={out}", *OFF])
    p = report["protocol"]
    assert p["source"] == "robonet" and p["num_clips"] == 3 and p["action_dim"] == 4 and p["image_size"] == 16
    assert [e["name"] for e in report["entries"]] == ["copy_last", "conv"]
    assert all(e["status"] == "ok" and e["num_clips"] == 3 for e in report["entries"])
    md = (out / "leaderboard.md").read_text()
    assert "RoboNet" in md and "| conv |" in md
