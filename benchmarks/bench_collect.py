"""Demo-collection speed: per-frame cost breakdown in one process, then a parallel collection run.

    python benchmarks/bench_collect.py --tasks 6 --demos-per-task 3 --workers 2 --out /tmp/bench_collect
    python benchmarks/bench_collect.py --success-only --demos-per-task 20   # expert success, all 50 tasks

Reports render and physics milliseconds per step, seconds per demo, frames per second over the pool, and the
projected wall time of the full 2,500-demo MT50 collection at the measured rate. The load average is printed
because this machine's cores are shared.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shutil
import time
from dataclasses import dataclass

import numpy as np

from envs.demos import collect_demos, format_summary
from envs.metaworld import MT50_TASKS, expert_policy, make_env
from foresight.data.episodes import read_manifest

from experiments.common import cli_main
from foresight.config import build_config


def step_breakdown(task: str, steps: int, image_size: int) -> dict[str, float]:
    env = make_env(task, image_size=image_size, variation_seed=0)
    policy = expert_policy(task)
    obs, _ = env.reset()
    state = obs["state"]
    t_phys = t_render = c_phys = c_render = 0.0
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, _, truncated, _ = env.physics_step(policy(state))
        t1, c1 = time.perf_counter(), time.process_time()
        env.render()
        t2, c2 = time.perf_counter(), time.process_time()
        t_phys, t_render = t_phys + t1 - t0, t_render + t2 - t1
        c_phys, c_render = c_phys + c1 - c0, c_render + c2 - c1
        if truncated:
            break
    env.close()
    return {"physics_ms": 1000 * t_phys / steps, "render_ms": 1000 * t_render / steps,
            "physics_cpu_ms": 1000 * c_phys / steps, "render_cpu_ms": 1000 * c_render / steps}


_ENV: dict = {}


def _success_job(job: tuple[str, int]) -> tuple[str, int, int | None, int]:
    from envs.demos import rollout_expert

    task, v = job
    if _ENV.get("task") != task:
        _ENV.update(task=task, env=make_env(task, image_size=16), policy=expert_policy(task))
    _ENV["env"].set_variation(v)
    ep, first = rollout_expert(_ENV["env"], _ENV["policy"], render=False)
    return task, v, first, len(ep["states"])


def expert_success(variations: int, workers: int, out: str | None) -> None:
    """Physics-only expert rollouts (the collection protocol without pixels) on variations 0..N-1 of all 50."""
    import json
    import multiprocessing as mp
    from collections import defaultdict

    from tqdm import tqdm

    jobs = [(t, v) for t in MT50_TASKS for v in range(variations)]
    res: dict = defaultdict(list)
    t0 = time.perf_counter()
    with mp.get_context("forkserver").Pool(workers) as pool:
        for task, v, first, length in tqdm(pool.imap_unordered(_success_job, jobs), total=len(jobs)):
            res[task].append((v, first, length))
    rows, perfect = [], 0
    for task in MT50_TASKS:
        ok = sum(f is not None for _, f, _ in res[task])
        perfect += ok == variations
        firsts = [f for _, f, _ in res[task] if f is not None]
        rows.append({"task": task, "success": ok, "n": variations,
                     "mean_first_success": float(np.mean(firsts)) if firsts else None,
                     "failed_variations": sorted(v for v, f, _ in res[task] if f is None)})
        print(f"{task:32s} {ok:3d}/{variations}  first success at step "
              f"{rows[-1]['mean_first_success'] or float('nan'):6.1f}  failed {rows[-1]['failed_variations']}")
    print(f"tasks at 100%: {perfect}/50; overall {sum(r['success'] for r in rows)}/{50 * variations}; "
          f"{time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


@dataclass
class BenchCollectConfig:
    """Demo-collection speed."""

    tasks: int = 6                    # first N tasks, spread over MT50 (every 50/N-th)
    demos_per_task: int = 3           # demos collected per task
    workers: int = 2                  # worker processes
    image_size: int = 64              # H = W of the frames
    out: str = "/tmp/bench_collect"   # scratch dataset folder (deleted first)
    success_only: bool = False        # expert success on all 50 tasks, no pixels
    json: str | None = None           # write the --success-only table here


def main(argv: list[str] | None = None) -> None:
    cfg = build_config(BenchCollectConfig, sys.argv[1:] if argv is None else argv)
    if cfg.success_only:
        expert_success(cfg.demos_per_task, cfg.workers, cfg.json)
        return
    b = step_breakdown("pick-place-v3", 60, cfg.image_size)
    print(f"one process, {cfg.image_size}px: physics+policy {b['physics_ms']:.1f} ms/step wall "
          f"({b['physics_cpu_ms']:.1f} CPU), render {b['render_ms']:.1f} ms/frame wall ({b['render_cpu_ms']:.1f} CPU)")
    tasks = list(MT50_TASKS[:: max(1, len(MT50_TASKS) // cfg.tasks)])[: cfg.tasks]
    shutil.rmtree(cfg.out, ignore_errors=True)
    t0 = time.perf_counter()
    s = collect_demos(cfg.out, tasks=tasks, demos_per_task=cfg.demos_per_task, image_size=cfg.image_size,
                      workers=cfg.workers, progress=False)
    wall = time.perf_counter() - t0
    recs = read_manifest(cfg.out, include_failed=True)
    frames = sum(r.length for r in recs)
    n = len(recs)
    print(format_summary(s))
    per_demo = wall / n
    print(f"{n} demos, {frames} frames in {wall:.1f} s wall with {cfg.workers} workers (incl. pool start-up): "
          f"{per_demo:.2f} s/demo wall, {s.worker_seconds / n:.2f} s/demo per worker, {frames / wall:.0f} frames/s")
    cpu_per_demo = s.worker_cpu_seconds / n
    print(f"projected full MT50 (2,500 demos): {2500 * per_demo / 60:.0f} min at this wall rate; "
          f"{2500 * cpu_per_demo / cfg.workers / 60:.0f} min from CPU time ({cpu_per_demo:.2f} CPU s/demo) "
          f"on {cfg.workers} otherwise idle cores")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    cli_main(main, BenchCollectConfig, __doc__)
