"""How far inside the success region the benchmark's goal images lie.

For each (task, variation) this reports Meta-World's ``info['obj_to_target']`` (reach: hand to target; the object
tasks: object to target) at the scripted expert's first successful frame (`envs.goals.make_goal(settle_steps=0)`)
and at the settled goal the planning benchmark uses (``settle_steps=--extra``: the successful frame deepest in
the success region within that many steps). A goal pictured at the edge of success means an agent that matches
the picture exactly succeeds only if it lands on the right side of the threshold.

    python benchmarks/goal_margin.py --tasks reach-v3 --out docs/bench/goal_margin_reach.json
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from experiments.common import UsageError, cli_main, write_results
from foresight.config import build_config


def expert_margin(env, task: str, variation: int, extra: int) -> dict:
    """The success distance at the expert's first successful frame and at the goal settled ``extra`` steps on."""
    from envs.goals import make_goal

    try:
        first = make_goal(task, variation, env=env, settle_steps=0)
    except RuntimeError:
        return {"first_success": None}
    settled = make_goal(task, variation, env=env, settle_steps=extra)
    return {"first_success": first.step, "at_first_success": _round(first.success_distance),
            "settled_goal_step": settled.step, "at_settled_goal": _round(settled.success_distance)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


@dataclass
class GoalMarginConfig:
    """How far inside the success region the goal images lie."""

    tasks: tuple[str, ...] = ("reach-v3",)  # Meta-World task names
    variations: str = "10000-10009"         # goal variations: 'A-B' or comma-separated
    extra: int = 40                         # expert steps after its first success searched for the settled goal
    out: str = ""                           # write the results here as JSON


def parse_variations(text: str) -> list[int]:
    """``"10000-10009"`` (inclusive range) or ``"10000,10003"`` -> the variation seeds."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-"))
            variations = list(range(lo, hi + 1))
        else:
            variations = [int(x) for x in text.split(",")]
    except ValueError:
        variations = []
    if not variations:
        raise UsageError(f"variations: expected 'A-B' (A <= B) or a comma-separated list of ints, got {text!r}")
    return variations


def main(argv: list[str] | None = None) -> dict:
    cfg = build_config(GoalMarginConfig, sys.argv[1:] if argv is None else argv)
    variations = parse_variations(cfg.variations)
    from envs.metaworld import make_env

    results: dict = {"command": "python benchmarks/goal_margin.py " + " ".join(argv or sys.argv[1:]), "tasks": {}}
    for task in cfg.tasks:
        env = make_env(task, image_size=16, variation_seed=variations[0], max_steps=500)
        rows = []
        for v in variations:
            rows.append({"variation": v, **expert_margin(env, task, v, cfg.extra)})
            print(task, rows[-1])
        env.close()
        summary = {"per_variation": rows}
        for key in ("at_first_success", "at_settled_goal"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            summary[f"{key}_range"] = [min(vals), max(vals)] if vals else None
        results["tasks"][task] = summary
    return write_results(cfg.out, results)


if __name__ == "__main__":
    cli_main(main, GoalMarginConfig, __doc__)
