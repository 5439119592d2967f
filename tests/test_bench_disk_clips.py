"""benchmarks/bench_disk_clips.py at smoke size: three runs, the disk runs build their frame file, nothing left."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_disk_clips  # noqa: E402


def test_disk_clip_benchmark_smoke(tmp_path):
    work = tmp_path / "work"
    out = bench_disk_clips.main(["--gib", "0.004", "--compare-gib", "0.002", "--steps", "1", "--batch-size", "2",
                                 "--episode-length", "20", f"workdir={work}", f"out={tmp_path / 'r.json'}"])
    runs = {r["run"]: r for r in out["runs"]}
    assert set(runs) == {"ram_small", "disk_small", "disk_large"}
    assert not runs["ram_small"]["frames_on_disk"] and runs["disk_large"]["frame_file_built"]
    assert runs["disk_large"]["clips"] > runs["disk_small"]["clips"] == runs["ram_small"]["clips"] > 0
    assert all(r["clips_per_second"] > 0 and r["peak_rss_gib"] > 0 for r in runs.values())
    assert not work.exists() and (tmp_path / "r.json").is_file()
