r"""Collect Meta-World MT50 episodes into an episode dataset (resumable): expert demos or world-model interaction data.

    python experiments/collect_metaworld.py --out /work/data/metaworld_64                  # 50 tasks x 50 demos
    python experiments/collect_metaworld.py --out /work/data/metaworld_small --tasks mt10 --demos-per-task 10
    python experiments/collect_metaworld.py --out data/mw128 --tasks reach-v3,push-v3 --image-size 128
    python experiments/collect_metaworld.py --out data/mw_interaction \
        --tasks reach-v3,push-v3,drawer-close-v3,button-press-topdown-v3,door-open-v3 \
        --episodes-per-task 40 --policy expert:0.2,noisy:0.4,random:0.4 --episode-steps 50

--policy: 'expert' (scripted demos, stopped 10 steps after success, failures not stored), 'noisy' (expert +
Gaussian noise, sometimes a held random action), 'random' (uniform actions held 1-5 steps), or a mixture of
fractions per task. Noisy and random episodes run --episode-steps steps and are kept whether or not they succeed.
Variations >= 10000 are reserved for the planning benchmark and never collected.

Re-running the same command after a kill continues where it stopped; other settings into the same folder are
refused. The per-task summary is printed at the end and written to ``<out>/summary.json``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import json
from dataclasses import dataclass

from envs.demos import EPISODE_STEPS, SUCCESS_TAIL, CollectionConfigError, collect_demos, format_summary
from envs.interaction import PolicyConfig, PolicyMixture
from envs.metaworld import MT10_TASKS, MT50_TASKS, CameraConfig
from experiments.common import UsageError, cli_main
from foresight.checkpoint import atomic_write_bytes
from foresight.config import build_config


@dataclass
class Args:
    out: str = ""  # dataset directory (required; created, resumed if it exists)
    tasks: str = "all"  # 'all', 'mt10', a number N (first N of MT50_TASKS, alphabetical) or comma-separated names
    demos_per_task: int = 50  # variations 0..N-1 per task (alias: episodes_per_task); v is test iff v % 10 == 9
    policy: str = "expert"  # expert | noisy | random | mixture 'expert:0.2,noisy:0.4,random:0.4'
    episode_steps: int = EPISODE_STEPS  # steps of a noisy or random episode (expert: until success + tail)
    noise_std: float = PolicyConfig.noise_std  # noisy: Gaussian std added to the expert's actions
    random_prob: float = PolicyConfig.random_prob  # noisy: per-step probability of starting a held random action
    hold_min: int = PolicyConfig.hold_min  # noisy/random: shortest hold (steps) of a random action
    hold_max: int = PolicyConfig.hold_max  # noisy/random: longest hold (steps) of a random action
    seed: int = 0  # seed of the noisy/random policies (per episode: seed, task, variation)
    image_size: int = 64  # 64 (default), 128 or 256
    camera: str = "default"  # 'default' (corner2 moved, upright) or a Meta-World camera name
    workers: int = 2  # worker processes (0 = collect in this process)
    max_steps: int = 500  # episode cap
    success_tail: int = SUCCESS_TAIL  # steps kept after the first success
    sim_states: bool = False  # also store MuJoCo integration states per frame ('sim_states')
    max_jobs: int | None = None  # stop after this many new episodes (benchmarks)
    no_progress: bool = False  # hide the progress bar


ALIASES = {"episodes_per_task": "demos_per_task"}  # older spelling of an option, still accepted


def parse_tasks(spec: str) -> list[str]:
    if spec == "all":
        return list(MT50_TASKS)
    if spec == "mt10":
        return list(MT10_TASKS)
    if spec.isdigit():
        return list(MT50_TASKS[: int(spec)])
    return [t.strip() for t in spec.split(",") if t.strip()]


def _alias(arg: str) -> str:
    """``--episodes-per-task`` / ``episodes_per_task=`` -> the field's name (``demos_per_task``)."""
    dashes = "--" if arg.startswith("--") else ""
    key, eq, value = arg[len(dashes):].partition("=")
    if not (dashes or eq):
        return arg  # a value, not an option
    name = ALIASES.get(key.replace("-", "_"))
    return f"{dashes}{name}{eq}{value}" if name else arg


def main(argv: list[str] | None = None) -> dict:
    a = build_config(Args, [_alias(arg) for arg in (sys.argv[1:] if argv is None else argv)])
    if not a.out:
        raise UsageError("--out is required: the dataset directory to write (e.g. --out data/metaworld_64)")
    for name in ("demos_per_task", "episode_steps", "hold_min", "hold_max", "image_size", "max_steps"):
        if getattr(a, name) < 1:
            raise UsageError(f"{name}: expected a positive integer, got {getattr(a, name)}")
    try:
        a.policy = str(PolicyMixture.parse(a.policy))
    except ValueError as e:
        raise UsageError(f"policy: {e}") from None
    try:
        camera = CameraConfig() if a.camera == "default" else CameraConfig.named(a.camera)
        policy_config = PolicyConfig(noise_std=a.noise_std, random_prob=a.random_prob, hold_min=a.hold_min,
                                     hold_max=a.hold_max)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        summary = collect_demos(
            a.out, tasks=parse_tasks(a.tasks), demos_per_task=a.demos_per_task, image_size=a.image_size,
            camera=camera, workers=a.workers, max_steps=a.max_steps, success_tail=a.success_tail,
            record_sim_states=a.sim_states, policy=a.policy, episode_steps=a.episode_steps,
            policy_config=policy_config, seed=a.seed, progress=not a.no_progress, max_jobs=a.max_jobs,
        )
    except CollectionConfigError as e:
        raise UsageError(str(e)) from None
    print(format_summary(summary))
    out = summary.to_dict()
    atomic_write_bytes(os.path.join(a.out, "summary.json"), json.dumps(out, indent=1).encode())
    return out


if __name__ == "__main__":
    cli_main(main, Args, __doc__)
