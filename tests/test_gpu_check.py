"""benchmarks/gpu_check.py runs end to end on CPU at tiny size, so the script a lent GPU runs cannot rot."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return _load_script()


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_cpu_run_writes_every_section(gpu_check, tmp_path):
    out = tmp_path / "check.json"
    report = gpu_check.main(["--device", "cpu", "--preset", "tiny", "--steps", "2", "--warmup", "1",
                             "--budget-seconds", "40", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["problems"] == [] and report["problems"] == []
    assert set(data["sections"]) == set(gpu_check.SECTIONS)
    for name, entry in data["sections"].items():
        assert entry["ok"] and entry["error"] is None, (name, entry.get("traceback"))
        assert entry["seconds"] >= 0 and entry["results"]["summary"]
    s = {name: entry["results"] for name, entry in data["sections"].items()}

    assert s["mt50"]["report_written"] and set(s["mt50"]["mean_success"]) == {"harp", "cnn_lstm"}

    env = s["environment"]
    assert env["torch"] and env["device"] == "cpu" and env["torch_threads"] >= 1
    assert set(env["sdpa_enabled"]) == {"flash", "mem_efficient", "cudnn", "math"}
    assert env["sdpa_runs"]["math"]["ok"]

    train = s["train"]
    assert train["precision"] == "fp32" and _positive(train["matmul_tflops"])
    assert set(train["models"]) == {"harp", "ghvae"}
    for name, r in train["models"].items():
        for key in ("steps_per_s", "clips_per_s", "step_seconds", "flops_per_step", "model_tflops_per_s",
                    "mfu_vs_matmul", "loss"):
            assert _positive(r[key]), (name, key, r[key])
        assert r["timed_steps"] >= 1 and r["mfu_vs_nominal"] is None  # no nominal peak for a CPU
        assert r["clips_per_s"] == pytest.approx(r["steps_per_s"] * r["batch_size"], rel=1e-2)
    assert train["models"]["harp"]["stage"] == "transformer" and _positive(train["models"]["harp"]["tokens_per_s"])
    assert train["models"]["ghvae"]["stage"] == "finetune"

    sampling = s["sampling"]
    assert sampling["candidates"] == 200 and sampling["horizon"] == 10 and sampling["context_stride0"]
    assert _positive(sampling["fp32"]["predict_seconds"]) and _positive(sampling["fp32"]["frames_per_s"])

    planning = s["planning"]
    assert planning["cost"] == "embedding" and planning["fp32"]["evaluations"] == 600
    assert _positive(planning["fp32"]["seconds_per_plan"])

    ddp = s["ddp"]
    assert ddp["ran"] and ddp["backend"] == "gloo" and ddp["world_size"] == 1 and _positive(ddp["step_seconds"])

    ckpt = s["checkpoint"]
    assert ckpt["all_identical"]
    for name, r in ckpt["models"].items():
        assert r["weights_identical"] and r["predictions_identical"] and r["stage_restored"], (name, r)
        assert r["predictions"]["fp32"]["identical"] and r["predictions"]["fp32"]["max_abs_diff"] == 0.0


def test_sections_subset(gpu_check, tmp_path):
    out = tmp_path / "env.json"
    gpu_check.main(["--device", "cpu", "--sections", "environment", "--out", str(out)])
    assert list(json.loads(out.read_text())["sections"]) == ["environment"]


@pytest.mark.parametrize("argv", [["--bogus"], ["--sections", "train,nope"], ["--steps", "0"],
                                  ["--device", "tpu"], []])
def test_bad_option_exits_2(gpu_check, tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(argv + (["--out", str(tmp_path / "x.json")] if argv else []))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_cuda_requested_without_cuda_is_a_usage_error(gpu_check, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_check.cli_main(gpu_check.main, argv=["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
