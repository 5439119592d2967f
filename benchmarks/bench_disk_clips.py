"""Training from an episode store larger than memory: clip throughput and resident memory, disk vs RAM.

1. Writes a synthetic episode store whose raw frames total ``gib`` GiB (64x64 moving squares, so the compressed
   store itself stays small) and a ``compare_gib`` GiB one that fits in RAM.
2. In a fresh process for each run (so peak resident memory is that run's own): builds the clip dataset (frames
   in RAM, or ``frames_dir``: a raw frame file read with one pread per clip, `foresight.data.frame_store`) and
   trains a ``tiny``-width conv predictor at 64x64 for ``steps`` steps on shuffled clips, timing the steps after a
   warm-up. Reports clips per second, the peak resident set (``ru_maxrss``) and the frame-file build time.
3. Deletes what it wrote unless ``keep=true``.

Runs: RAM on the small store, disk on the small store, disk on the large store. The large store's random clips
come from a file larger than the page cache can hold, so its reads really go to the disk.

    python benchmarks/bench_disk_clips.py --gib 32 --out docs/bench/disk_clips.json     # ~70 GB free disk needed
    python benchmarks/bench_disk_clips.py --gib 0.01 --compare-gib 0.005 --steps 5      # smoke
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import multiprocessing as mp
import os
import shutil
import time
from typing import Any

import numpy as np

from experiments.common import UsageError, cli_main, write_results
from foresight.config import build_config

FRAME_BYTES = 64 * 64 * 3


@dataclass
class BenchDiskConfig:
    """What to build and measure."""

    gib: float = 32.0                 # raw frame bytes of the large store (GiB; this machine has 24 GiB RAM)
    compare_gib: float = 1.0          # raw frame bytes of the store that also runs from RAM
    episode_length: int = 100         # frames per synthetic episode
    steps: int = 200                  # timed training steps per run (after 10 warm-up steps)
    batch_size: int = 16
    context: int = 2
    future: int = 10
    workdir: str = "data/bench_disk_clips"  # where the stores and frame files go
    keep: bool = False                # keep the stores and frame files afterwards
    out: str = ""                     # write the results here as JSON


def synthetic_episode(index: int, length: int) -> dict[str, np.ndarray]:
    """A square moving by its actions over a grey background (compresses well, like real scenes)."""
    g = np.random.default_rng(index)
    actions = g.uniform(-1, 1, (length - 1, 4)).astype(np.float32)
    frames = np.full((length, 64, 64, 3), 96, np.uint8)
    pos = g.uniform(8, 48, 2)
    colour = g.integers(0, 256, 3, dtype=np.uint8)
    for t in range(length):
        y, x = int(pos[0]), int(pos[1])
        frames[t, y:y + 8, x:x + 8] = colour
        if t < length - 1:
            pos = np.clip(pos + 3 * actions[t, :2], 0, 56)
    return {"frames": frames, "actions": actions, "states": np.zeros((length, 4), np.float32)}


def write_store(root: Path, gib: float, length: int) -> int:
    """Episodes until their frames reach ``gib`` GiB; returns the episode count (resumes a partial store)."""
    from tqdm import tqdm

    from foresight.data.episodes import EpisodeWriter

    count = max(1, int(gib * 2**30 / (FRAME_BYTES * length)))
    writer = EpisodeWriter(root, meta={"image_size": 64, "action_dim": 4})
    done = writer.done_keys()
    for i in tqdm(range(count), desc=f"store {root.name}", leave=False):
        if ("synthetic", i) not in done:
            writer.write(synthetic_episode(i, length), task="synthetic", variation=i, split="train")
    return count


def _train_run(store: str, frames_dir: str | None, cfg: dict[str, Any], queue: Any) -> None:
    """Child process: build the dataset, train, report clips/s and peak RSS."""
    import resource

    import torch

    from foresight.config import merge, preset
    from foresight.data.clips import ClipDataset, ClipLoader
    from foresight.data.episodes import EpisodeDataset
    from foresight.models.baselines import ConvPredictor, ConvPredictorConfig

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = ClipDataset(EpisodeDataset(store), context=cfg["context"], future=cfg["future"], with_states=False,
                     frames_dir=frames_dir)
    build = time.perf_counter() - t0
    model = ConvPredictor(merge(preset(ConvPredictorConfig, "tiny"), {
        "image_size": 64, "context_frames": cfg["context"], "future_frames": cfg["future"]}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = iter(ClipLoader(ds, batch_size=cfg["batch_size"], shuffle=True, seed=0, prefetch=2))
    warm, steps = 10, cfg["steps"]
    for step in range(warm + steps):
        if step == warm:
            t1 = time.perf_counter()
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(ClipLoader(ds, batch_size=cfg["batch_size"], shuffle=True, seed=step, prefetch=2))
            batch = next(loader)
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t1
    queue.put({"frames_on_disk": frames_dir is not None, "frames_gib": ds.frames.shape[0] * FRAME_BYTES / 2**30,
               "clips": len(ds), "dataset_build_seconds": round(build, 1),
               "frame_file_built": bool(getattr(ds, "frames_built", False)),
               "clips_per_second": round(steps * cfg["batch_size"] / seconds, 1),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)})


def run_in_child(store: Path, frames_dir: Path | None, cfg: BenchDiskConfig) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_run, args=(str(store), str(frames_dir) if frames_dir else None,
                                                asdict(cfg), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = build_config(BenchDiskConfig, sys.argv[1:] if argv is None else argv)
    if cfg.gib <= 0 or cfg.compare_gib <= 0 or cfg.steps < 1 or cfg.batch_size < 1:
        raise UsageError("gib and compare_gib must be > 0, steps and batch_size >= 1")
    if cfg.episode_length < cfg.context + cfg.future:
        raise UsageError(f"episode_length {cfg.episode_length} is shorter than a clip ({cfg.context + cfg.future})")
    work = Path(cfg.workdir)
    free = shutil.disk_usage(work.parent if not work.exists() else work).free / 2**30
    if free < 1.2 * (cfg.gib + cfg.compare_gib):
        raise UsageError(f"{work}: {free:.1f} GiB free, the frame files need about {cfg.gib + cfg.compare_gib:.1f}")
    small, large = work / "store_small", work / "store_large"
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_disk_clips.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "config": asdict(cfg), "runs": []}
    try:
        t0 = time.perf_counter()
        write_store(small, cfg.compare_gib, cfg.episode_length)
        write_store(large, cfg.gib, cfg.episode_length)
        results["store_write_seconds"] = round(time.perf_counter() - t0, 1)
        for name, store, frames_dir in (("ram_small", small, None), ("disk_small", small, work / "frames_small"),
                                        ("disk_large", large, work / "frames_large")):
            row = {"run": name, **run_in_child(store, frames_dir, cfg)}
            results["runs"].append(row)
            print(row, flush=True)
        ram = results["runs"][0]["clips_per_second"]
        results["disk_large_vs_ram"] = round(results["runs"][2]["clips_per_second"] / ram, 3)
    finally:
        if not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
    return write_results(cfg.out, results)


if __name__ == "__main__":
    cli_main(main, BenchDiskConfig, __doc__)
