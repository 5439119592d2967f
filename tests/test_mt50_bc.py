"""The main job, end to end at the `tiny` preset: collect, pretrain, fine-tune 4 methods, evaluate, report."""

import json

import pytest

pytestmark = [pytest.mark.mujoco]


def test_pipeline_runs_end_to_end_and_resumes(tmp_path):
    from experiments import mt50_bc

    args = ["--preset", "tiny", f"run_dir={tmp_path / 'run'}", f"data_root={tmp_path / 'data'}",
            "demos_per_task=10", "methods=[harp,cnn_lstm]", "bc.steps=3"]
    first = mt50_bc.main(args)
    assert set(first) == {"harp", "cnn_lstm"}
    run = tmp_path / "run"
    for name in ("results.md", "results.csv", "results.png", "eval/harp_seed0.json", "pretrain/model/config.json",
                 "bc/cnn_lstm_seed0/policy/config.json"):
        assert (run / name).is_file(), name
    text = (run / "results.md").read_text()
    assert "Protocol: 1 task(s) (reach-v3)" in text and "HARP (fine-tuned)" in text
    assert list((run / "videos" / "harp").glob("reach-v3_trial0_*.gif"))
    ev = json.loads((run / "eval" / "harp_seed0.json").read_text())
    assert ev["per_task"]["reach-v3"]["trials"] == 1

    # A rerun reuses every finished stage: nothing is collected, trained or evaluated again.
    stamp = (run / "eval" / "harp_seed0.json").stat().st_mtime_ns
    model_stamp = (run / "pretrain" / "model" / "model.safetensors").stat().st_mtime_ns
    assert mt50_bc.main(args) == first
    assert (run / "eval" / "harp_seed0.json").stat().st_mtime_ns == stamp
    assert (run / "pretrain" / "model" / "model.safetensors").stat().st_mtime_ns == model_stamp
