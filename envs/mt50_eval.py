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

Batched inference: with ``envs_per_worker`` = B > 1 and a policy that takes batched observations
(``supports_batched_observations``, as every `agents.policies.Policy` does), each worker steps B envs of one task
and asks the policy for their B actions in one call. An env whose episode ends starts the task's next trial at
once (``policy.reset(env_ids=[i])`` restarts its history), so the batch stays full until the task's trials run
out. Each episode still sees only its own frames; its ``seconds`` is then the wall time from its reset to its
end, shared with the other episodes of the batch.
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


def _worker_init(factory: Callable, image_size: int, max_steps: int, envs_per_worker: int = 1) -> None:
    try:
        import torch

        torch.set_num_threads(1)  # one core per worker; the workers are the parallelism
    except ImportError:  # pragma: no cover
        pass
    _WORKER.update(factory=factory, image_size=image_size, max_steps=max_steps, envs_per_worker=envs_per_worker,
                   policies={}, envs={})


def _task_policy_and_envs(task: str, count: int) -> tuple[Any, list]:
    w = _WORKER
    if task not in w["policies"]:
        w["policies"][task] = w["factory"](task)
    envs = w["envs"].setdefault(task, [])
    while len(envs) < count:
        envs.append(make_env(task, image_size=w["image_size"], max_steps=w["max_steps"]))
    return w["policies"][task], envs


def _run_trials(job: tuple[str, tuple[int, ...], tuple[bool, ...]]) -> list[EpisodeResult]:
    """One task's trials in this worker: B envs stepped together when the policy takes batches, else one by one."""
    task, trials, records = job
    policy = _task_policy_and_envs(task, 1)[0]
    batch = min(_WORKER["envs_per_worker"], len(trials))
    if batch <= 1 or not getattr(policy, "supports_batched_observations", False):
        return [_run_episode((task, trial, record)) for trial, record in zip(trials, records)]
    return _run_batched(task, list(zip(trials, records)), batch)


def _run_batched(task: str, queue: list[tuple[int, bool]], batch: int) -> list[EpisodeResult]:
    policy, envs = _task_policy_and_envs(task, batch)
    max_steps = _WORKER["max_steps"]
    slots: list[dict[str, Any] | None] = [None] * batch
    last_obs: list[dict] = [{}] * batch
    results: list[EpisodeResult] = []
    policy.reset()

    def start(i: int) -> None:
        if not queue:
            slots[i] = None  # keeps feeding its last frame to the policy; its actions are ignored
            return
        trial, record = queue.pop(0)
        variation = held_out_variation(trial)
        t0 = time.perf_counter()
        obs, _ = envs[i].reset(seed=variation)
        policy.reset(env_ids=[i])
        last_obs[i] = obs
        slots[i] = {"trial": trial, "variation": variation, "t0": t0, "steps": 0,
                    "frames": [obs["image"]] if record else None}

    for i in range(batch):
        start(i)
    while any(slot is not None for slot in slots):
        batch_obs = {key: np.stack([o[key] for o in last_obs]) for key in ("image", "state")}
        actions = np.asarray(policy.select_action(batch_obs), dtype=np.float32)
        for i, slot in enumerate(slots):
            if slot is None:
                continue
            obs, _, _, truncated, info = envs[i].step(actions[i])
            slot["steps"] += 1
            last_obs[i] = obs
            if slot["frames"] is not None:
                slot["frames"].append(obs["image"])
            success = info["success"] >= 1.0
            if success or truncated or slot["steps"] >= max_steps:
                frames = slot["frames"]
                results.append(EpisodeResult(task=task, trial=slot["trial"], variation_seed=slot["variation"],
                                             success=bool(success), steps=slot["steps"],
                                             seconds=time.perf_counter() - slot["t0"],
                                             frames=np.stack(frames) if frames is not None else None))
                start(i)
    return results


def _run_episode(job: tuple[str, int, bool]) -> EpisodeResult:
    task, trial, record = job
    w = _WORKER
    policy, envs = _task_policy_and_envs(task, 1)
    env = envs[0]
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
    envs_per_worker: int = 1,
    record_videos: int = 1,
    progress: bool = True,
    desc: str = "MT50 eval",
) -> list[EpisodeResult]:
    """Run ``trials`` held-out episodes of every task; returns one `EpisodeResult` per episode.

    ``envs_per_worker``: envs each worker steps together with one batched policy call (see the module doc).
    ``record_videos``: the first this-many trials of each task keep their frames (for rollout videos).
    ``workers=0`` runs in this process (useful for debugging and tests).
    """
    unknown = [t for t in tasks if t not in MT50_TASKS]
    if unknown:
        raise ValueError(f"unknown MT50 task(s) {unknown}; expected names from envs.metaworld.MT50_TASKS")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if envs_per_worker < 1:
        raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
    # One job = a slice of one task's trials, so a worker reuses the envs and policy it built for the task. Tasks
    # are split into slices of at least envs_per_worker trials until there are about 4 jobs per worker, so that
    # the workers finish together (5 tasks on 2 workers as 5 whole-task jobs would leave one worker idle for a
    # fifth of the run).
    parts = -(-4 * max(workers, 1) // max(len(tasks), 1))
    parts = max(1, min(parts, trials // envs_per_worker))
    per_job = -(-trials // parts)
    jobs = [(task, tuple(range(lo, min(lo + per_job, trials))),
             tuple(t < record_videos for t in range(lo, min(lo + per_job, trials))))
            for task in tasks for lo in range(0, trials, per_job)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks) * trials, desc=desc, disable=not progress, dynamic_ncols=True)
    results: list[EpisodeResult] = []

    def collect(batch: list[EpisodeResult]) -> None:
        results.extend(batch)
        bar.update(len(batch))
        bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")

    if workers <= 0:
        _worker_init(factory, image_size, max_steps, envs_per_worker)
        for job in jobs:
            collect(_run_trials(job))
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init,
                      initargs=(factory, image_size, max_steps, envs_per_worker)) as pool:
            for batch in pool.imap_unordered(_run_trials, jobs):
                collect(batch)
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
