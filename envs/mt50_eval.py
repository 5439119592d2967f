"""Meta-World MT50 evaluation of image policies: tasks x held-out variations, parallel over worker processes.

Protocol (HARP Sec. 5.3 / the usual Meta-World one): every task is run on held-out task variations (the test
split of `envs.demos`: variation v with ``v % 10 == 9``; trial i uses the i-th of them, so demos never share a
variation with evaluation), ``trials`` episodes per task (10 by default), success if ``info['success']`` is
reached at any step within ``max_steps`` (500). An episode stops at its first success, which cannot change the
outcome and saves most of the simulation time of a good policy.

Policies reach the workers as a *factory*: a picklable callable ``factory(task_name) -> policy`` with
``policy.reset()`` and ``policy.select_action(obs) -> action [4]`` (e.g. ``functools.partial(load_policy, dir)``
wrapped to ignore the task). Workers are started with the 'spawn' context (forking a process that has rendered
deadlocks Mesa) and build their envs lazily.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from envs.demos import TEST_EVERY
from envs.metaworld import MT50_TASKS, expert_policy, make_env
from foresight.metrics.intervals import wilson_interval

__all__ = ["EpisodeResult", "ExpertPolicyFactory", "evaluate_policy", "summarize", "held_out_variation"]


def held_out_variation(trial: int) -> int:
    """The variation seed of held-out trial ``trial`` (never used for a training demo)."""
    return trial * TEST_EVERY + TEST_EVERY - 1


@dataclass
class EpisodeResult:
    task: str
    trial: int
    variation_seed: int
    success: bool
    steps: int            # steps taken (the first success step + 1 when successful)
    seconds: float
    frames: np.ndarray | None = field(default=None, repr=False)  # uint8 [T, H, W, 3] when recorded


class _ExpertPolicy:
    """Meta-World's scripted expert behind the image-policy interface (it reads the state, not the image)."""

    def __init__(self, task_name: str):
        self._act = expert_policy(task_name)

    def reset(self) -> None:
        pass

    def select_action(self, observation: dict) -> np.ndarray:
        return self._act(observation["state"])


class ExpertPolicyFactory:
    """Factory for the scripted experts: the harness's sanity check (it should score near 100%)."""

    def __call__(self, task_name: str) -> _ExpertPolicy:
        return _ExpertPolicy(task_name)


_WORKER: dict[str, Any] = {}


def _worker_init(factory: Callable, image_size: int, max_steps: int) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # one core per worker; the workers are the parallelism
    except ImportError:  # pragma: no cover
        pass
    _WORKER.update(factory=factory, image_size=image_size, max_steps=max_steps, policies={}, envs={})


def _run_episode(job: tuple[str, int, bool]) -> EpisodeResult:
    task, trial, record = job
    w = _WORKER
    if task not in w["policies"]:
        w["policies"][task] = w["factory"](task)
    if task not in w["envs"]:
        w["envs"][task] = make_env(task, image_size=w["image_size"], max_steps=w["max_steps"])
    policy, env = w["policies"][task], w["envs"][task]
    variation = held_out_variation(trial)
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=variation)
    policy.reset()
    frames = [obs["image"]] if record else None
    success, steps = False, 0
    for steps in range(1, w["max_steps"] + 1):
        action = np.asarray(policy.select_action(obs), dtype=np.float32)
        obs, _, _, truncated, info = env.step(action)
        if record:
            frames.append(obs["image"])
        if info["success"] >= 1.0:
            success = True
            break
        if truncated:
            break
    return EpisodeResult(task=task, trial=trial, variation_seed=variation, success=success, steps=steps,
                         seconds=time.perf_counter() - t0,
                         frames=np.stack(frames) if record else None)


def evaluate_policy(
    factory: Callable[[str], Any],
    *,
    tasks: Sequence[str] = MT50_TASKS,
    trials: int = 10,
    max_steps: int = 500,
    image_size: int = 64,
    workers: int = 2,
    record_videos: int = 1,
    progress: bool = True,
    desc: str = "MT50 eval",
) -> list[EpisodeResult]:
    """Run ``trials`` held-out episodes of every task; returns one `EpisodeResult` per episode.

    ``record_videos``: the first this-many trials of each task keep their frames (for rollout videos).
    ``workers=0`` runs in this process (useful for debugging and tests).
    """
    unknown = [t for t in tasks if t not in MT50_TASKS]
    if unknown:
        raise ValueError(f"unknown MT50 task(s) {unknown}; expected names from envs.metaworld.MT50_TASKS")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    # Task-major order, so each worker keeps reusing the env and policy it built for a task.
    jobs = [(task, trial, trial < record_videos) for task in tasks for trial in range(trials)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True)
    results: list[EpisodeResult] = []
    if workers <= 0:
        _worker_init(factory, image_size, max_steps)
        for job in jobs:
            results.append(_run_episode(job))
            bar.update(1)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(factory, image_size, max_steps)) as pool:
            chunk = max(1, trials // 2)
            for result in pool.imap_unordered(_run_episode, jobs, chunksize=chunk):
                results.append(result)
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
    bar.close()
    results.sort(key=lambda r: (tasks.index(r.task), r.trial))
    return results


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Per-task success rates with 95 % Wilson intervals and their mean (the MT50 number, with the interval of
    all trials pooled), plus per-episode rows (no frames)."""
    per_task: dict[str, dict[str, Any]] = {}
    for r in results:
        row = per_task.setdefault(r.task, {"successes": 0, "trials": 0, "steps": []})
        row["successes"] += int(r.success)
        row["trials"] += 1
        row["steps"].append(r.steps)
    for row in per_task.values():
        row["success_rate"] = row["successes"] / row["trials"]
        row["ci95"] = list(wilson_interval(row["successes"], row["trials"]))
        row["mean_steps"] = float(np.mean(row.pop("steps")))
    rates = [row["success_rate"] for row in per_task.values()]
    successes = sum(row["successes"] for row in per_task.values())
    return {
        "mean_success": float(np.mean(rates)) if rates else float("nan"),
        "success_ci95": list(wilson_interval(successes, len(results))),  # pooled over all trials
        "num_tasks": len(per_task),
        "trials_per_task": max((row["trials"] for row in per_task.values()), default=0),
        "per_task": per_task,
        "episodes": [{k: v for k, v in asdict(r).items() if k != "frames"} for r in results],
    }
