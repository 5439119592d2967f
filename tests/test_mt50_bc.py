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


def _fake_collection(root, tasks, variations, T=6, size=16):
    """A tiny episode store in the collection's layout (split: test iff variation % 10 == 9), written in a shuffled
    order as parallel collection workers would."""
    import numpy as np

    from foresight.data.episodes import EpisodeWriter

    writer = EpisodeWriter(root, meta={"image_size": size, "action_dim": 4})
    keys = [(t, v) for t in tasks for v in range(variations)]
    for task, v in [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]:
        rng = np.random.default_rng(v)
        success = np.zeros(T, bool)
        success[-2:] = True
        episode = {"frames": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
                   "actions": rng.uniform(-1, 1, (T - 1, 4)).astype(np.float32),
                   "states": rng.standard_normal((T, 39)).astype(np.float32),
                   "rewards": np.zeros(T - 1, np.float32), "success": success}
        writer.write(episode, task=task, variation=v, split="test" if v % 10 == 9 else "train")


def test_uses_exactly_demos_per_task_of_a_fuller_collection(tmp_path):
    from experiments import mt50_bc
    from foresight.config import merge, preset

    tasks = ("reach-v3", "drawer-close-v3")
    _fake_collection(tmp_path / "data", tasks, variations=30)  # a fuller collection than the run asks for
    cfg = merge(preset(mt50_bc.MT50BCConfig, "tiny"), {"data_root": str(tmp_path / "data"), "tasks": tasks,
                                                       "demos_per_task": 12})
    clips = mt50_bc._clips(cfg, "train", length=4, augment=0)
    assert len(clips) == 2 * 11 * (6 - 4 + 1)  # 11 train-split variations among 0..11 per task, 3 clips each
    train = [(r.task, r.variation) for r in mt50_bc._episodes(cfg, "train").records]
    test = [(r.task, r.variation) for r in mt50_bc._episodes(cfg, "test").records]
    # variations 0..11 of each task, in task then variation order (not the order the workers finished in)
    assert train == [(t, v) for t in tasks for v in (*range(9), 10, 11)]
    assert test == [(t, 9) for t in tasks]


def _fake_eval(rates: dict, trials: int) -> dict:
    per_task = {t: {"successes": round(r * trials), "trials": trials, "success_rate": round(r * trials) / trials}
                for t, r in rates.items()}
    return {"mean_success": sum(v["success_rate"] for v in per_task.values()) / len(per_task), "per_task": per_task}


@pytest.mark.parametrize("seeds", [1, 3])
def test_results_report_intervals_with_one_and_several_seeds(tmp_path, seeds):
    from experiments import mt50_bc
    from foresight.config import merge, preset

    tasks = ("reach-v3", "drawer-close-v3", "push-v3")  # two difficulty groups: easy, hard
    cfg = merge(preset(mt50_bc.MT50BCConfig, "tiny"), {"tasks": tasks, "eval_trials": 10,
                                                       "seeds": tuple(range(seeds)), "preset_name": "tiny"})
    harp = [_fake_eval({"reach-v3": 1.0, "drawer-close-v3": 0.9, "push-v3": 0.6 + 0.1 * s}, 10) for s in range(seeds)]
    vqt = [_fake_eval({"reach-v3": 0.2, "drawer-close-v3": 0.1, "push-v3": 0.0}, 10) for _ in range(seeds)]
    text = mt50_bc.write_report(cfg, tmp_path, {"harp": harp, "vq_transformer": vqt}, {"collect": 1.0})
    result = json.loads((tmp_path / "results.json").read_text())
    h, v = result["methods"]
    n = 30 * seeds
    assert h["overall"]["trials"] == n and v["overall"]["successes"] == 3 * seeds
    lo, hi = h["overall"]["ci95"]
    assert lo < h["overall"]["rate"] < hi and v["overall"]["ci95"][1] < lo  # HARP's interval lies above
    assert "its interval lies above that of VQ-Transformer" in text
    assert set(h["per_group"]) == {"easy", "hard"} and h["per_group"]["easy"]["trials"] == 20 * seeds
    if seeds == 1:
        assert "seed_std" not in h["overall"] and "; seeds " not in text
        assert h["per_task"]["reach-v3"]["ci95"] == pytest.approx([0.7225, 1.0], abs=1e-3)  # 10/10
    else:
        assert h["overall"]["seeds"] == seeds and h["overall"]["seed_std"] > 0 and v["overall"]["seed_std"] == 0
        assert "; seeds " in text
    csv_header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert csv_header[:6] == ["method", "success", "ci95_low", "ci95_high", "successes", "trials"]
    assert (tmp_path / "results.png").stat().st_size > 0 and "| easy |" in text and "| push-v3 |" in text


def test_presets_name_real_tasks_and_batch_their_evaluation():
    from envs.metaworld import MT10_TASKS, MT50_TASKS
    from experiments.mt50_bc import MT10, MT50BCConfig, CPU_TASKS

    assert MT10 == MT10_TASKS and set(CPU_TASKS) <= set(MT50_TASKS)
    gpu = MT50BCConfig.PRESETS["gpu"]
    assert gpu["tasks"] == MT10_TASKS and len(gpu["seeds"]) == 3
    assert MT50BCConfig().eval_envs_per_worker > 1  # the CPU default steps several envs per batched policy call
