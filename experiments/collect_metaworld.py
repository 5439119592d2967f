"""Collect Meta-World MT50 scripted-expert demonstrations into an episode dataset (resumable).

    python experiments/collect_metaworld.py --out /work/data/metaworld_64                  # 50 tasks x 50 demos
    python experiments/collect_metaworld.py --out /work/data/metaworld_small --tasks mt10 --demos-per-task 10
    python experiments/collect_metaworld.py --out data/mw128 --tasks reach-v3,push-v3 --image-size 128

Re-running the same command after a kill continues where it stopped. The per-task summary is printed at the end
and written to ``<out>/summary.json``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import argparse
import json
from dataclasses import dataclass

from envs.demos import SUCCESS_TAIL, collect_demos, format_summary
from envs.metaworld import MT10_TASKS, MT50_TASKS, CameraConfig
from foresight.checkpoint import atomic_write_bytes


@dataclass
class Args:
    out: str  # dataset directory (created; appended to if it exists)
    tasks: str = "all"  # 'all', 'mt10', a number N (first N of MT50_TASKS, alphabetical) or comma-separated names
    demos_per_task: int = 50  # variations 0..N-1 per task; variation v is test iff v % 10 == 9
    image_size: int = 64  # 64 (default), 128 or 256
    camera: str = "default"  # 'default' (corner2 moved, upright) or a Meta-World camera name
    workers: int = 2  # worker processes (0 = collect in this process)
    max_steps: int = 500  # episode cap
    success_tail: int = SUCCESS_TAIL  # steps kept after the first success
    sim_states: bool = False  # also store MuJoCo integration states per frame ('sim_states')
    max_jobs: int | None = None  # stop after this many new episodes (benchmarks)
    no_progress: bool = False  # hide the progress bar


def parse_tasks(spec: str) -> list[str]:
    if spec == "all":
        return list(MT50_TASKS)
    if spec == "mt10":
        return list(MT10_TASKS)
    if spec.isdigit():
        return list(MT50_TASKS[: int(spec)])
    return [t.strip() for t in spec.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default=Args.tasks)
    p.add_argument("--demos-per-task", type=int, default=Args.demos_per_task)
    p.add_argument("--image-size", type=int, default=Args.image_size)
    p.add_argument("--camera", default=Args.camera)
    p.add_argument("--workers", type=int, default=Args.workers)
    p.add_argument("--max-steps", type=int, default=Args.max_steps)
    p.add_argument("--success-tail", type=int, default=Args.success_tail)
    p.add_argument("--sim-states", action="store_true")
    p.add_argument("--max-jobs", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    a = Args(**{k: v for k, v in vars(p.parse_args(argv)).items()})
    camera = CameraConfig() if a.camera == "default" else CameraConfig.named(a.camera)
    summary = collect_demos(
        a.out, tasks=parse_tasks(a.tasks), demos_per_task=a.demos_per_task, image_size=a.image_size,
        camera=camera, workers=a.workers, max_steps=a.max_steps, success_tail=a.success_tail,
        record_sim_states=a.sim_states, progress=not a.no_progress, max_jobs=a.max_jobs,
    )
    print(format_summary(summary))
    out = summary.to_dict()
    atomic_write_bytes(os.path.join(a.out, "summary.json"), json.dumps(out, indent=1).encode())
    return out


if __name__ == "__main__":
    main()
