"""RoboNet loader throughput on CPU: standard clips per second from RoboNet-layout HDF5 files.

Writes synthetic files at RoboNet's stored resolution (240x320, 31 frames) in both encodings, then times
`RoboNetClipDataset` (the standard 2 + 10 frame clip) through a torch DataLoader, the metadata index build, and,
for comparison, the converted episode store served by `foresight.data.ClipLoader`.

    python benchmarks/bench_robonet.py --files 24 --workers 0 2 --out runs/bench/robonet.json
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import torch

from foresight.data import robonet as rn
from foresight.data import robonet_io

from experiments.common import UsageError, cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


def time_loader(ds, *, batch_size: int, num_workers: int, epochs: int) -> tuple[float, float | None]:
    """(clips per wall-clock second, clips per CPU second of this process) over ``epochs`` passes.

    The CPU-second figure (only for num_workers=0, where all decoding happens in this process, including the
    ffmpeg children it waits for) is what one core delivers; it is far less sensitive than wall time to other
    jobs sharing the machine.
    """
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                         persistent_workers=num_workers > 0)
    n = 0
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            n += batch["frames"].shape[0]
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0 + _children_cpu() - k0
    return n / wall, (n / cpu if num_workers == 0 else None)


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


@dataclass
class BenchRoboNetConfig:
    """RoboNet loader throughput."""

    files: int = 24                            # synthetic RoboNet-layout files written
    steps: int = 31                            # recorded steps per file
    frame_size: tuple[int, ...] = (240, 320)   # recorded frame height and width
    cams: int = 1                              # camera streams per file
    workers: tuple[int, ...] = (0, 2)          # DataLoader worker counts measured
    epochs: int = 2                            # passes over the files per measurement
    batch_size: int = 8                        # clips per batch
    mp4_backends: tuple[Literal["pyav", "ffmpeg"], ...] = ("pyav", "ffmpeg")  # video decoders measured
    sizes: tuple[int, ...] = (64, 256)         # output frame sizes measured
    out: str | None = None                     # write the results as JSON here


def main(argv: list[str] | None = None) -> None:
    cfg = build_config(BenchRoboNetConfig, sys.argv[1:] if argv is None else argv)
    if len(cfg.frame_size) != 2:
        raise UsageError(f"frame_size: expected 2 ints (height width), got {list(cfg.frame_size)}")
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for encoding in ("mp4", "jpeg"):
            folder = Path(tmp) / encoding
            folder.mkdir()
            t0 = time.perf_counter()
            rn.write_synthetic_trajectories(folder, cfg.files, steps=cfg.steps, frame_size=tuple(cfg.frame_size),
                                            num_cams=cfg.cams, encoding=encoding, seed=0)
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            index = rn.RoboNetIndex.build(folder, progress=False)
            index_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rn.RoboNetIndex.build(folder, progress=False)
            cached_s = time.perf_counter() - t0
            mb = sum(p.stat().st_size for p in index.paths) / len(index) / 1e6
            print(f"[{encoding}] {cfg.files} files, {mb:.2f} MB each; write {cfg.files / write_s:.1f} files/s; "
                  f"index {cfg.files / index_s:.0f} files/s (cached rebuild {cached_s * 1e3:.1f} ms)")
            backends = [b for b in cfg.mp4_backends if b != "pyav" or robonet_io._have_pyav()]
            for backend in backends if encoding == "mp4" else [None]:
                if backend is not None:  # forked DataLoader workers inherit the choice
                    robonet_io._have_pyav = (lambda use: (lambda: use))(backend == "pyav")
                for size in cfg.sizes:
                    for random_start in (False, True):
                        ds = rn.RoboNetClipDataset(index=index, image_size=size, random_start=random_start, seed=0)
                        for w in cfg.workers:
                            cps, cpu = time_loader(ds, batch_size=cfg.batch_size, num_workers=w,
                                                   epochs=cfg.epochs)
                            rows.append({"encoding": encoding, "mp4_backend": backend, "image_size": size,
                                         "random_start": random_start, "num_workers": w,
                                         "clips_per_s": round(cps, 1),
                                         "clips_per_cpu_s": None if cpu is None else round(cpu, 1)})
                            per_cpu = f", {cpu:.1f} clips per CPU-second" if cpu is not None else ""
                            print(f"  {backend or ''} {size}x{size} {'random' if random_start else 'first 12'} "
                                  f"window, workers={w}: {cps:.1f} clips/s{per_cpu}")

            if encoding == "mp4":  # converted once, then served from memory by the library's ClipLoader
                from foresight.data import ClipDataset, ClipLoader, EpisodeDataset

                out = Path(tmp) / "episodes"
                t0 = time.perf_counter()
                rn.convert_to_episodes(index, out, image_size=64, progress=False)
                convert_s = time.perf_counter() - t0
                clips = ClipDataset(EpisodeDataset(out), context=2, future=10)
                loader = ClipLoader(clips, batch_size=32, shuffle=True)
                n, t0 = 0, time.perf_counter()
                for _ in range(5):
                    for batch in loader:
                        n += batch["frames"].shape[0]
                cps = n / (time.perf_counter() - t0)
                rows.append({"encoding": "converted-episodes", "image_size": 64, "random_start": True,
                             "num_workers": 0, "clips_per_s": round(cps, 1)})
                print(f"[converted] {cfg.files / convert_s:.1f} files/s to convert; ClipLoader 64x64: {cps:.0f} clips/s")

    info = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_average": os.getloadavg(),
            "torch_threads": 1, "files": cfg.files,
            "steps": cfg.steps, "frame_size": list(cfg.frame_size), "cams": cfg.cams, "results": rows}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    cli_main(main, BenchRoboNetConfig, __doc__)
