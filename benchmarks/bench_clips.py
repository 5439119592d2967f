"""Clip-loading throughput: clips/s of 12-frame 64x64 clips from an episode dataset (or synthetic episodes).

    python benchmarks/bench_clips.py --data /work/data/metaworld_small --batch-size 64 --batches 100
    python benchmarks/bench_clips.py --synthetic 200          # 200 random episodes of 100 frames

Prints one line per setting (output dtype, augmentation, prefetch) and the load average, since the machine is
shared.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time
from dataclasses import dataclass

import numpy as np
import torch

from foresight.data.clips import ClipDataset, ClipLoader
from foresight.data.episodes import EpisodeDataset

from experiments.common import cli_main
from foresight.config import build_config


def synthetic(n: int, T: int = 100, size: int = 64) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"frames": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
             "actions": rng.standard_normal((T - 1, 4)).astype(np.float32),
             "states": rng.standard_normal((T, 39)).astype(np.float32), "task": f"t{i % 10}"} for i in range(n)]


@dataclass
class BenchClipsConfig:
    """Clip-loading throughput."""

    data: str = "/work/data/metaworld_small"  # episode dataset to read
    synthetic: int = 0                        # use N synthetic episodes instead of --data
    batch_size: int = 64                      # clips per batch
    batches: int = 100                        # batches timed
    threads: int = 2                          # torch CPU threads


def main(argv: list[str] | None = None) -> None:
    cfg = build_config(BenchClipsConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    episodes = synthetic(cfg.synthetic) if cfg.synthetic else EpisodeDataset(cfg.data, split="train")
    base = ClipDataset(episodes, context=1, future=11)
    print(f"loaded {len(base.episode_tasks)} episodes, {len(base.frames)} frames, {len(base)} clips "
          f"in {time.perf_counter() - t0:.1f} s ({base.frames.nbytes / 2**20:.0f} MiB of frames)")
    for dtype in (torch.float32, torch.uint8):
        for shift in (0, 4):
            for prefetch in (0, 2):
                base.augment_shift, base.frames_dtype = shift, dtype
                loader = ClipLoader(base, batch_size=cfg.batch_size, shuffle=True, seed=0, prefetch=prefetch)
                it = iter(loader)
                next(it)  # warm up
                n, t = 0, time.perf_counter()
                for _ in range(cfg.batches):
                    try:
                        batch = next(it)
                    except StopIteration:
                        it = iter(loader)
                        batch = next(it)
                    n += batch["frames"].shape[0]
                dt = time.perf_counter() - t
                print(f"frames={str(dtype).split('.')[-1]:8s} augment_shift={shift} prefetch={prefetch}: "
                      f"{n / dt:8.0f} clips/s  (batch {cfg.batch_size}, {cfg.batches} batches, "
                      f"shape {list(batch['frames'].shape)})")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    cli_main(main, BenchClipsConfig, __doc__)
