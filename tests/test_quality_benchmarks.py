"""benchmarks/harp_quality.py and benchmarks/ghvae_quality.py end to end at the tiny presets on a tiny episode store:
every phase trains through foresight.train.Trainer in its own run directory (checkpoints, metrics.jsonl), results
carry the quality numbers and each phase's steps / train_seconds / run dir, and a rerun of the same command skips
finished phases and resumes an interrupted one from its checkpoint."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ghvae_quality  # noqa: E402
import harp_quality  # noqa: E402

from foresight import checkpoint as ckpt  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """2 tasks x (3 train + 1 test) random episodes of 14 frames, 16x16 (the tiny presets' size), 4-D actions."""
    from foresight.data.episodes import EpisodeWriter

    root = tmp_path_factory.mktemp("store")
    writer = EpisodeWriter(root, meta={"image_size": 16, "action_dim": 4})
    T = 14  # GHVAE evaluates 2 context + 10 future frames
    for task in ("reach-v3", "push-v3"):
        for v in range(4):
            rng = np.random.default_rng(v + 10 * len(task))
            success = np.zeros(T, bool)
            success[-2:] = True
            episode = {"frames": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
                       "actions": rng.uniform(-1, 1, (T - 1, 4)).astype(np.float32),
                       "states": rng.standard_normal((T, 39)).astype(np.float32),
                       "rewards": np.zeros(T - 1, np.float32), "success": success}
            writer.write(episode, task=task, variation=v, split="test" if v == 3 else "train")
    return root


def _last(run_dir: Path) -> tuple[Path, dict]:
    last = run_dir / "checkpoints" / ckpt.LAST_LINK
    assert last.is_symlink() and (last / "config.json").is_file(), f"no checkpoint in {run_dir}"
    record = json.loads((last / ckpt.TRAINING_STATE_DIR / "trainer.json").read_text())
    return last.resolve(), record


def _steps_logged(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if r["split"] == "train"]


def test_harp_quality_trains_each_stage_with_the_trainer_and_resumes(store, tmp_path):
    out = tmp_path / "harp"
    argv = ["--preset", "tiny", f"data={store}", f"out={out}", "tokenizer_minutes=5", "transformer_minutes=5",
            "max_steps=3", "save_every=2", "eval_every=2", "batch=4", "eval_clips=4", "threads=1", "device=cpu"]
    harp_quality.main(argv)
    results = json.loads((out / "results.json").read_text())
    for key in ("reconstruction_psnr", "copy_last", "tokenizer_ceiling", "harp_topk10", "harp_greedy", "heldout"):
        assert key in results, key
    for key in ("psnr", "ssim", "per_frame_psnr"):
        assert key in results["harp_topk10"] and key in results["copy_last"]
    assert results["tokenizer_steps"] == results["transformer_steps"] == 3
    for stage in ("tokenizer", "transformer"):
        phase = results["phases"][stage]
        assert phase["steps"] == 3 and phase["run_dir"] == str(out / stage) and phase["train_seconds"] >= 0
        step_dir, record = _last(out / stage)
        assert record["finished"] and record["step"] == 3 and record["stage"] == stage
        assert record["train_config"]["max_minutes"] == 5 and record["train_config"]["steps"] == 3
        assert _steps_logged(out / stage)[-1] == 3
    assert (out / "model" / "config.json").is_file() and (out / "tokenizer_model" / "config.json").is_file()

    # Interrupt the transformer stage after its step-2 checkpoint: drop the final one, point `last` back.
    ckpt_dir = out / "transformer" / "checkpoints"
    shutil.rmtree(ckpt_dir / ckpt.step_dir_name(3))
    ckpt.update_last_link(ckpt_dir, ckpt_dir / ckpt.step_dir_name(2))
    tokenizer_ckpt, _ = _last(out / "tokenizer")
    mtime = (tokenizer_ckpt / "model.safetensors").stat().st_mtime_ns

    harp_quality.main(argv)
    again = json.loads((out / "results.json").read_text())
    assert again["phases"]["tokenizer"]["skipped"] is True and again["phases"]["tokenizer"]["steps"] == 3
    assert (tokenizer_ckpt / "model.safetensors").stat().st_mtime_ns == mtime  # not trained again
    assert again["phases"]["transformer"]["resumed_at_step"] == 2 and again["phases"]["transformer"]["steps"] == 3
    _, record = _last(out / "transformer")
    assert record["finished"] and record["step"] == 3
    logged = _steps_logged(out / "transformer")
    assert logged == sorted(logged) and logged.count(3) == 1  # resumed lines replace the dropped ones


def test_ghvae_quality_runs_every_phase_under_a_minutes_budget_and_skips_them_on_rerun(store, tmp_path):
    out = tmp_path / "ghvae"
    argv = ["--preset", "tiny", f"data={store}", f"out={out}", "phase_minutes=0.002", "finetune_minutes=0.002",
            "max_steps=40", "train_future=3", "batch=4", "eval_clips=4", "samples=2", "threads=1", "device=cpu"]
    ghvae_quality.main(argv)
    results = json.loads((out / "results.json").read_text())
    assert results["budget"]["e2e_minutes"] == pytest.approx(2 * 0.002)
    assert [row["module"] for row in results["greedy"]] == [1, 2]
    rows = {f"greedy_module{r['module']}": r for r in results["greedy"]}
    rows.update(greedy_finetuned=results["finetune"], e2e_scratch=results["e2e_scratch"])
    records = {}
    for name, row in rows.items():
        for key in ("psnr", "ssim", "psnr_best_of_samples", "per_frame_psnr", "steps", "train_seconds"):
            assert key in row, (name, key)
        assert row["run_dir"] == str(out / name) and 1 <= row["steps"] <= 40
        step_dir, record = _last(out / name)
        assert record["finished"] and record["step"] == row["steps"]
        # stopped by the minutes budget (or, on a very slow machine, the step cap)
        assert record["train_seconds"] >= record["train_config"]["max_minutes"] * 60 or record["step"] == 40
        assert _steps_logged(out / name)[-1] == row["steps"]
        records[name] = (step_dir, (step_dir / "model.safetensors").stat().st_mtime_ns)
    assert "copy_last" in results and len(results["copy_last"]["per_frame_psnr"]) == 10
    assert rows["greedy_module2"]["cache_mb"] > 0  # module 2 trained on cached module-1 features

    ghvae_quality.main(argv)
    again = json.loads((out / "results.json").read_text())
    rows2 = {f"greedy_module{r['module']}": r for r in again["greedy"]}
    rows2.update(greedy_finetuned=again["finetune"], e2e_scratch=again["e2e_scratch"])
    for name, (step_dir, mtime) in records.items():
        assert rows2[name]["steps"] == rows[name]["steps"]
        assert _last(out / name)[0] == step_dir and (step_dir / "model.safetensors").stat().st_mtime_ns == mtime
        assert rows2[name]["psnr"] == rows[name]["psnr"]  # the same model, evaluated with the same seed
