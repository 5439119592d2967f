"""Reading speed of a LeRobot v3.0 folder (MP4 video): export an episode store, then time the one-time index
(decoding every video into a `ClipDataset`) and the clips per second of one epoch of 12-frame clips.

    python benchmarks/bench_lerobot.py --src data/mw_interaction --out docs/bench/lerobot_read.json
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from experiments.common import UsageError, cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


@dataclass
class BenchLeRobotConfig:
    """LeRobot v3.0 reading speed."""

    src: str = ""         # episode store to export (experiments/collect_metaworld.py); required
    frames: int = 12      # frames per clip (1 context + the rest future)
    batch_size: int = 32  # clips per batch
    threads: int = 1      # torch threads
    out: str = ""         # write the results here as JSON


def main(argv: list[str] | None = None) -> dict:
    cfg = build_config(BenchLeRobotConfig, sys.argv[1:] if argv is None else argv)
    if not cfg.src:
        raise UsageError("--src: required (an episode store, e.g. data/mw_interaction)")
    if not (Path(cfg.src) / "manifest.jsonl").is_file():
        raise UsageError(f"--src {cfg.src}: not an episode store (no manifest.jsonl)")
    import torch

    from foresight.checkpoint import atomic_write_json
    from foresight.data.clips import ClipLoader
    from foresight.data.lerobot import lerobot_clips
    from foresight.data.lerobot_export import write_lerobot

    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = write_lerobot(cfg.src, Path(tmp) / "v30")
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        clips = lerobot_clips(folder, context=1, future=cfg.frames - 1, image_size=64)
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        n = sum(len(b["frames"]) for b in ClipLoader(clips, batch_size=cfg.batch_size, prefetch=0))
        read_s = time.perf_counter() - t
    res = {"command": "python benchmarks/bench_lerobot.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch_threads": cfg.threads,
           "clips": n, "clip_frames": cfg.frames, "export_seconds": round(export_s, 2),
           "index_seconds": round(index_s, 2), "clips_per_second": round(n / read_s, 1)}
    print(res)
    if cfg.out:
        atomic_write_json(cfg.out, res)
    return res


if __name__ == "__main__":
    cli_main(main, BenchLeRobotConfig, __doc__)
