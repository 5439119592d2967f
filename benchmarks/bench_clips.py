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

import numpy as np
import torch

from foresight.data.clips import ClipDataset, ClipLoader
from foresight.data.episodes import EpisodeDataset

from experiments.common import argparser, cli_main


def synthetic(n: int, T: int = 100, size: int = 64) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"frames": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
             "actions": rng.standard_normal((T - 1, 4)).astype(np.float32),
             "states": rng.standard_normal((T, 39)).astype(np.float32), "task": f"t{i % 10}"} for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    p = argparser(__doc__)
    p.add_argument("--data", default="/work/data/metaworld_small", help="episode dataset to read")
    p.add_argument("--synthetic", type=int, default=0, help="use N synthetic episodes instead of --data")
    p.add_argument("--batch-size", type=int, default=64, help="clips per batch")
    p.add_argument("--batches", type=int, default=100, help="batches timed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    episodes = synthetic(a.synthetic) if a.synthetic else EpisodeDataset(a.data, split="train")
    base = ClipDataset(episodes, context=1, future=11)
    print(f"loaded {len(base.episode_tasks)} episodes, {len(base.frames)} frames, {len(base)} clips "
          f"in {time.perf_counter() - t0:.1f} s ({base.frames.nbytes / 2**20:.0f} MiB of frames)")
    for dtype in (torch.float32, torch.uint8):
        for shift in (0, 4):
            for prefetch in (0, 2):
                base.augment_shift, base.frames_dtype = shift, dtype
                loader = ClipLoader(base, batch_size=a.batch_size, shuffle=True, seed=0, prefetch=prefetch)
                it = iter(loader)
                next(it)  # warm up
                n, t = 0, time.perf_counter()
                for _ in range(a.batches):
                    try:
                        batch = next(it)
                    except StopIteration:
                        it = iter(loader)
                        batch = next(it)
                    n += batch["frames"].shape[0]
                dt = time.perf_counter() - t
                print(f"frames={str(dtype).split('.')[-1]:8s} augment_shift={shift} prefetch={prefetch}: "
                      f"{n / dt:8.0f} clips/s  (batch {a.batch_size}, {a.batches} batches, "
                      f"shape {list(batch['frames'].shape)})")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    cli_main(main)
