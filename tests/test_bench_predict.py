"""benchmarks/bench_predict.py at tiny size: every number it reports is there and consistent (no timing asserted)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_predict  # noqa: E402


def test_bench_predict_reports_flops_latency_and_scaling(tmp_path):
    out = tmp_path / "predict.json"
    args = ["--models", "ghvae,copy_last", "--size", "tiny", "--candidates", "4", "--horizon", "3", "--repeats", "1",
            "--threads", "1", "--scaling", "--scaling-candidates", "2,4", "--scaling-horizons", "2,3",
            f"out={out}"]
    result = bench_predict.main(args)
    assert json.loads(out.read_text())["runs"].keys() == {"1"}
    run = result["runs"]["1"]
    assert run["reference"]["matmul_gflops"] > 0 and run["reference"]["conv_gflops"] > 0
    ghvae = run["models"]["ghvae"]
    assert ghvae["gflop_per_candidate"] > 0 and ghvae["ms_per_candidate"] > 0 and ghvae["parameters"] > 0
    assert ghvae["achieved_gflops"] == pytest.approx(
        ghvae["gflop_per_candidate"] * 4 / ghvae["seconds_per_call"], rel=1e-6)
    assert set(ghvae["scaling"]["candidates"]) == {"2", "4"} and set(ghvae["scaling"]["horizon"]) == {"2", "3"}
    assert run["models"]["copy_last"]["gflop_per_candidate"] == 0  # copying frames is no arithmetic
    # FLOPs are counted per candidate: the same model at twice the candidates costs the same per candidate
    model = bench_predict.build_model("ghvae", "tiny", bench_predict.torch.device("cpu"))
    f2 = bench_predict.count_flops(bench_predict.predict_fn(model, 2, 3, bench_predict.torch.device("cpu"), 0))
    f4 = bench_predict.count_flops(bench_predict.predict_fn(model, 4, 3, bench_predict.torch.device("cpu"), 0))
    assert f4 == pytest.approx(2 * f2, rel=0.05)
    with pytest.raises(bench_predict.UsageError, match="unknown model"):
        bench_predict.main(["--models", "nope"])


def test_flop_count_includes_cpu_attention():
    # PyTorch's counter alone counts the fused CPU attention kernel as zero FLOPs
    torch = bench_predict.torch
    q, k = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 10, 8)
    flops = bench_predict.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 2 * (2 * 2 * 4 * 1 * 8 * 10)  # scores and weighted values, 2 FLOPs per multiply-add
