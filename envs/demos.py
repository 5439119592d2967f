"""MT50 episodes (scripted-expert demos and exploration data), collected in parallel into a `foresight.data.episodes`
dataset.

Protocol (fixed and documented so datasets are comparable):

* Task variation ``v`` of a task (v = 0, 1, 2, ...) is `MetaWorldImageEnv` variation_seed ``v``; episode v of every
  task comes from its own variation. Variations >= `envs.interaction.PLANNING_VARIATION_START` (10000) are the
  planning benchmark's goals and are refused.
* Policy: a `envs.interaction.PolicyMixture` ('expert' by default) gives each variation its policy, as a function of
  the variation index only (resume-safe). The mixture and the exploration settings are part of the dataset's
  meta, so resuming with other settings into the same folder raises `CollectionConfigError`.
* Split: variation v is held out for test iff ``v % 10 == 9`` (9, 19, 29, 39, 49): 10% per task, independent of
  how many demos are collected, so a resumed or enlarged collection never moves an episode between splits.
* An expert episode starts at reset and ends ``success_tail`` (K = 10) steps after the first step whose
  ``info['success']`` is 1, or after ``max_steps`` (500) steps. A demo that never succeeds is not stored; it is
  recorded in the manifest as a failure (counted in the summary, not retried on resume).
* A noisy or random episode runs exactly ``episode_steps`` steps (default 50) and is stored whether or not it
  succeeds (world-model data); its policy draws from `envs.interaction.episode_rng` (seed, task, variation).
* Stored per episode: frames uint8 [T, H, W, 3] (expert: T = first success frame + K + 1; others:
  episode_steps + 1), actions float32 [T-1, 4] (the clipped actions actually applied), states float32 [T, 39],
  rewards [T-1], success bool [T]; the manifest holds task, variation, split and ``extra`` = {variation_seed,
  steps, seconds, cpu_seconds, policy, policy_params, seed (non-expert only)}.

Each expert demo first runs physics only; only a successful one is replayed with rendering (the replay is checked
to reproduce the recorded states bit for bit), so failures cost no rendering.
Workers are started with the 'forkserver' context (forking a process that has rendered deadlocks Mesa) and
create their envs lazily; each writes its episode file atomically and the parent appends the manifest line.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import multiprocessing as mp
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from envs.interaction import (PLANNING_VARIATION_START, PolicyConfig, PolicyMixture, check_training_variation,
                              episode_rng, make_policy, planning_variations)
from foresight.data.episodes import EpisodeRecord, EpisodeWriter, read_manifest, read_meta, save_episode

__all__ = ["SUCCESS_TAIL", "TEST_EVERY", "EPISODE_STEPS", "PLANNING_VARIATION_START", "planning_variations",
           "CollectionConfigError", "split_of", "rollout_policy", "rollout_expert", "render_replay",
           "collect_demos", "format_summary"]

SUCCESS_TAIL = 10  # steps kept after the first success (HARP clips need 12 frames; every kept demo has >= 12)
TEST_EVERY = 10  # variation v is a test episode iff v % TEST_EVERY == TEST_EVERY - 1
EPISODE_STEPS = 50  # steps of a noisy or random episode (the expert stops SUCCESS_TAIL steps after success)


class CollectionConfigError(ValueError):
    """The requested collection cannot run: bad settings, settings that clash with the dataset, planning goals."""


def split_of(variation: int) -> str:
    """'test' for variations 9, 19, 29, ... (10% per task), else 'train'."""
    return "test" if int(variation) % TEST_EVERY == TEST_EVERY - 1 else "train"


def rollout_policy(env: Any, policy: Any, *, success_tail: int | None = SUCCESS_TAIL, steps: int | None = None,
                   record_sim_states: bool = False, render: bool = True) -> tuple[dict[str, np.ndarray], int | None]:
    """Run ``policy(state) -> action`` in ``env`` from reset; return (episode dict, first success frame or None).

    The episode stops ``success_tail`` steps after the first success (None: never at success), after ``steps``
    steps (None: no limit), or when the env truncates. With ``render=False`` only physics runs (no 'frames'):
    `render_replay` adds the frames afterwards.
    """
    obs, _ = env.reset()
    state = obs["state"]
    frames, states, actions, rewards, success = [obs["image"]], [state], [], [], [False]
    sims = [env.get_sim_state()["physics"]] if record_sim_states else None
    first: int | None = None
    while True:
        action = np.clip(policy(state), -1.0, 1.0).astype(np.float32)
        if render:
            obs, reward, terminated, truncated, info = env.step(action)
            state = obs["state"]
            frames.append(obs["image"])
        else:
            state, reward, truncated, info = env.physics_step(action)
            terminated = False
        states.append(state)
        actions.append(action)
        rewards.append(reward)
        success.append(bool(info["success"]))
        if sims is not None:
            sims.append(env.get_sim_state()["physics"])
        t = len(states) - 1  # index of the frame just produced
        if first is None and success[-1]:
            first = t
        if success_tail is not None and first is not None and t - first >= success_tail:
            break
        if (steps is not None and t >= steps) or terminated or truncated:
            break
    episode = {
        "actions": np.stack(actions).astype(np.float32),  # [T-1, 4]
        "states": np.stack(states).astype(np.float32),  # [T, 39]
        "rewards": np.asarray(rewards, np.float32),  # [T-1]
        "success": np.asarray(success, bool),  # [T]
    }
    if render:
        episode = {"frames": np.stack(frames).astype(np.uint8), **episode}  # [T, H, W, 3]
    if sims is not None:
        episode["sim_states"] = np.stack(sims)  # [T, n] float64
    return episode, first


def rollout_expert(env: Any, policy: Any, *, success_tail: int = SUCCESS_TAIL, record_sim_states: bool = False,
                   render: bool = True) -> tuple[dict[str, np.ndarray], int | None]:
    """`rollout_policy` with the demo protocol: stop ``success_tail`` steps after the first success."""
    return rollout_policy(env, policy, success_tail=success_tail, record_sim_states=record_sim_states,
                          render=render)


def render_replay(env: Any, episode: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replay ``episode['actions']`` from reset with rendering and return the episode with 'frames' added.

    Used to render only the demos that succeed (a failed demo runs 500 steps; rendering is ~80% of the cost).
    The replay must reproduce the recorded states exactly; RuntimeError otherwise.
    """
    obs, _ = env.reset()
    frames = [obs["image"]]
    for t, action in enumerate(episode["actions"]):
        obs, *_ = env.step(action)
        frames.append(obs["image"])
        if not np.array_equal(obs["state"].astype(np.float32), episode["states"][t + 1]):
            raise RuntimeError(f"replay of {env.task_name} variation {env.variation_seed} diverged at step {t + 1}")
    return {"frames": np.stack(frames).astype(np.uint8), **episode}


# --------------------------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Job:
    task: str
    variation: int
    policy: str = "expert"


@dataclass
class _WorkerConfig:
    root: str
    image_size: int
    camera: Any
    max_steps: int
    success_tail: int
    record_sim_states: bool
    episode_steps: int = EPISODE_STEPS
    policy_config: PolicyConfig = field(default_factory=PolicyConfig)
    seed: int = 0


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: _WorkerConfig) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("LP_NUM_THREADS", "1")  # one llvmpipe thread per worker: workers already fill the cores
    _WORKER.clear()
    _WORKER.update(cfg=cfg, env=None, task=None)


def _run_job(job: _Job) -> tuple[EpisodeRecord, float]:
    from envs.metaworld import expert_policy, make_env  # imported in the worker, after MUJOCO_GL is set

    cfg: _WorkerConfig = _WORKER["cfg"]
    check_training_variation(job.variation)
    t0, c0 = time.perf_counter(), time.process_time()
    if _WORKER["task"] != job.task:  # one env per worker at a time: jobs arrive grouped by task
        if _WORKER["env"] is not None:
            _WORKER["env"].close()
        _WORKER["env"] = make_env(job.task, image_size=cfg.image_size, camera=cfg.camera,
                                  variation_seed=job.variation, max_steps=cfg.max_steps)
        _WORKER["policy"] = expert_policy(job.task)
        _WORKER["task"] = job.task
    env = _WORKER["env"]
    env.set_variation(job.variation)
    if job.policy == "expert":
        episode, first = rollout_expert(env, _WORKER["policy"], success_tail=cfg.success_tail,
                                        record_sim_states=cfg.record_sim_states, render=False)
        if first is not None:
            episode = render_replay(env, episode)
        keep = first is not None
    else:  # exploration data is kept whatever happens, so it is rendered while it runs
        policy = make_policy(job.policy, job.task, cfg.policy_config, episode_rng(cfg.seed, job.task, job.variation),
                             expert=_WORKER["policy"])
        episode, first = rollout_policy(env, policy, success_tail=None, steps=cfg.episode_steps,
                                        record_sim_states=cfg.record_sim_states, render=True)
        keep = True
    seconds = time.perf_counter() - t0
    # CPU seconds (all threads of this worker) measure the cost independently of other load on the machine
    cpu = time.process_time() - c0
    extra = {"variation_seed": job.variation, "steps": int(len(episode["actions"])), "seconds": round(seconds, 3),
             "cpu_seconds": round(cpu, 3), "policy": job.policy,
             "policy_params": cfg.policy_config.params(job.policy)}
    if job.policy != "expert":
        extra["seed"] = cfg.seed
    split = split_of(job.variation)
    if not keep:
        rec = EpisodeRecord(task=job.task, variation=job.variation, split=split, status="failed",
                            length=len(episode["states"]), extra=extra)
    else:
        rec = save_episode(cfg.root, episode, task=job.task, variation=job.variation, split=split, extra=extra)
    return rec, seconds


# --------------------------------------------------------------------------------------------- driver


@dataclass
class CollectSummary:
    root: str
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_episodes: int = 0
    new_failures: int = 0
    skipped: int = 0
    wall_seconds: float = 0.0
    worker_seconds: float = 0.0
    worker_cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_task(records: Iterable[EpisodeRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, Counter] = defaultdict(Counter)
    lengths: dict[str, list[int]] = defaultdict(list)
    policies: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        c = out[r.task]
        policies[r.task][r.extra.get("policy", "expert")] += 1  # datasets from before mixtures are expert-only
        if r.status == "ok":
            c[r.split] += 1
            c["succeeded"] += r.first_success is not None
            lengths[r.task].append(r.length)
        else:
            c["failed"] += 1
    table = {}
    for task in sorted(out):
        c = out[task]
        n = c["train"] + c["test"] + c["failed"]
        table[task] = {"train": c["train"], "test": c["test"], "failed": c["failed"],
                       "success_rate": c["succeeded"] / n if n else 0.0,
                       "mean_length": float(np.mean(lengths[task])) if lengths[task] else 0.0,
                       "policies": dict(sorted(policies[task].items()))}
    return table


def format_summary(summary: CollectSummary) -> str:
    """A per-task table: episodes per split, expert failures, success rate (episodes reaching success, of all
    attempts), mean episode length (frames), episodes per policy."""
    rows = [f"{'task':32s} {'train':>5s} {'test':>5s} {'fail':>5s} {'succ%':>6s} {'len':>6s}  policies"]
    tot = Counter()
    for task, r in summary.per_task.items():
        pol = " ".join(f"{k}={v}" for k, v in r.get("policies", {}).items())
        rows.append(f"{task:32s} {r['train']:5d} {r['test']:5d} {r['failed']:5d} "
                    f"{100 * r['success_rate']:6.1f} {r['mean_length']:6.1f}  {pol}")
        tot.update(train=r["train"], test=r["test"], failed=r["failed"], perfect=int(r["failed"] == 0))
    rows.append(f"{'total':32s} {tot['train']:5d} {tot['test']:5d} {tot['failed']:5d}   "
                f"tasks without expert failures: {tot['perfect']}/{len(summary.per_task)}")
    rows.append(f"new episodes {summary.new_episodes}, new failures {summary.new_failures}, "
                f"skipped (already done) {summary.skipped}, wall {summary.wall_seconds:.1f} s, "
                f"worker time {summary.worker_seconds:.1f} s (CPU {summary.worker_cpu_seconds:.1f} s)")
    return "\n".join(rows)


def _collection_meta(*, image_size: int, camera: Any, max_steps: int, success_tail: int, mixture: PolicyMixture,
                     episode_steps: int, policy_config: PolicyConfig, seed: int) -> dict[str, Any]:
    meta = {"image_size": int(image_size), "camera": asdict(camera), "max_steps": int(max_steps),
            "success_tail": int(success_tail), "split_rule": f"test iff variation % {TEST_EVERY} == "
            f"{TEST_EVERY - 1}", "source": "metaworld v3 scripted policies", "action_dim": 4, "state_dim": 39,
            "policy": str(mixture)}
    if any(n != "expert" for n in mixture.names):  # settings that only exploration episodes depend on
        params = {k: v for n in mixture.names for k, v in policy_config.params(n).items()}
        meta.update(episode_steps=int(episode_steps), policy_seed=int(seed), policy_params=params)
    return meta


def _open_writer(root: str | os.PathLike, meta: dict[str, Any]) -> EpisodeWriter:
    root = Path(root)
    old = read_meta(root) if root.is_dir() else {}
    if old and "policy" not in old and read_manifest(root, include_failed=True) and meta["policy"] != "expert":
        raise CollectionConfigError(
            f"dataset {root} holds expert demos collected before policy mixtures were recorded; "
            f"collect policy {meta['policy']!r} into a new folder")
    try:
        return EpisodeWriter(root, meta=meta)
    except ValueError as e:
        raise CollectionConfigError(f"{e}; resume with the original settings or collect into a new folder") from e


def collect_demos(
    root: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    demos_per_task: int = 50,
    image_size: int = 64,
    camera: Any = None,
    workers: int = 2,
    max_steps: int = 500,
    success_tail: int = SUCCESS_TAIL,
    record_sim_states: bool = False,
    policy: str | PolicyMixture = "expert",
    episode_steps: int = EPISODE_STEPS,
    policy_config: PolicyConfig | None = None,
    seed: int = 0,
    start_method: str = "forkserver",
    progress: bool = True,
    max_jobs: int | None = None,
) -> CollectSummary:
    """Collect (or resume collecting) episodes for ``tasks`` x variations 0..demos_per_task-1 into ``root``.

    ``policy``: 'expert' (scripted demos, the default), 'noisy', 'random' or a mixture such as
    'expert:0.2,noisy:0.4,random:0.4' (see `envs.interaction`); ``episode_steps``, ``policy_config`` and
    ``seed`` set the noisy and random episodes. Resumable: (task, variation) pairs already in the manifest,
    successful or failed, are skipped. ``max_jobs`` stops after that many new episodes (for tests and
    benchmarks). ``workers=0`` runs in this process. Settings that cannot run (unknown tasks or policies,
    planning variations, settings that differ from the dataset's) raise `CollectionConfigError` before any
    episode is collected. Returns a summary over everything in the dataset for the requested tasks.
    """
    from envs.metaworld import DEFAULT_CAMERA, MT50_TASKS, _as_camera

    tasks = list(tasks) if tasks is not None else list(MT50_TASKS)
    unknown = [t for t in tasks if t not in MT50_TASKS]
    if unknown:
        raise CollectionConfigError(f"unknown tasks {unknown}; expected names from MT50_TASKS")
    if demos_per_task < 1:
        raise CollectionConfigError(f"episodes per task must be >= 1, got {demos_per_task}")
    try:
        check_training_variation(demos_per_task - 1)
        mixture = policy if isinstance(policy, PolicyMixture) else PolicyMixture.parse(policy)
        policy_config = policy_config if policy_config is not None else PolicyConfig()
    except ValueError as e:
        raise CollectionConfigError(str(e)) from e
    if not 1 <= episode_steps <= max_steps:
        raise CollectionConfigError(f"episode_steps must be in [1, max_steps={max_steps}], got {episode_steps}")
    cam = _as_camera(camera if camera is not None else DEFAULT_CAMERA)
    meta = _collection_meta(image_size=image_size, camera=cam, max_steps=max_steps, success_tail=success_tail,
                            mixture=mixture, episode_steps=episode_steps, policy_config=policy_config, seed=seed)
    writer = _open_writer(root, meta)
    done = writer.done_keys()
    assigned = mixture.assign(demos_per_task)
    jobs = [_Job(t, v, assigned[v]) for t in tasks for v in range(demos_per_task) if (t, v) not in done]
    skipped = len(tasks) * demos_per_task - len(jobs)
    if max_jobs is not None:
        jobs = jobs[:max_jobs]
    cfg = _WorkerConfig(root=str(Path(root)), image_size=int(image_size), camera=cam, max_steps=int(max_steps),
                        success_tail=int(success_tail), record_sim_states=record_sim_states,
                        episode_steps=int(episode_steps), policy_config=policy_config, seed=int(seed))
    summary = CollectSummary(root=str(root), skipped=skipped)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="episodes", unit="ep", dynamic_ncols=True)

    def handle(rec: EpisodeRecord, seconds: float) -> None:
        writer.append(rec)
        summary.worker_seconds += seconds
        summary.worker_cpu_seconds += rec.extra.get("cpu_seconds", 0.0)
        if rec.status == "ok":
            summary.new_episodes += 1
        else:
            summary.new_failures += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(task=rec.task, ok=summary.new_episodes, failed=summary.new_failures, refresh=False)

    try:
        if workers <= 0 or len(jobs) == 0:
            _worker_init(cfg)
            for job in jobs:
                handle(*_run_job(job))
            if _WORKER.get("env") is not None:
                _WORKER["env"].close()
                _WORKER.clear()
        else:
            ctx = mp.get_context(start_method)
            with ctx.Pool(processes=workers, initializer=_worker_init, initargs=(cfg,)) as pool:
                # chunksize 1 keeps the per-task grouping mostly intact per worker and the progress bar honest
                for rec, seconds in pool.imap_unordered(_run_job, jobs, chunksize=1):
                    handle(rec, seconds)
    finally:
        if bar is not None:
            bar.close()
    summary.wall_seconds = time.perf_counter() - t0
    summary.per_task = _per_task(r for r in writer.records if r.task in set(tasks))
    return summary
