"""How far inside the success region the benchmark's goal images lie.

The goal image of (task, variation) is the scripted expert's first successful frame (`envs.goals.make_goal`). This
script replays the expert from the start and reports Meta-World's ``info['obj_to_target']`` (reach: hand to
target; the object tasks: object to target) at that frame and its minimum over the next ``--extra`` steps, next to
the task's success radius. A goal pictured at the edge of success means an agent that matches the picture
exactly succeeds only if it lands on the right side of the threshold.

    python benchmarks/goal_margin.py --tasks reach-v3 --out docs/bench/goal_margin_reach.json
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import numpy as np

from experiments.common import argparser, cli_main


def expert_margin(env, policy, extra: int) -> dict:
    """Roll the expert to its first success and ``extra`` steps on; ``obj_to_target`` there and at best after."""
    obs, _ = env.reset()
    first, dist = None, []
    for t in range(1, env.max_steps + 1):
        obs, _, _, truncated, info = env.step(policy(obs["state"]))
        dist.append(float(info.get("obj_to_target", np.nan)))
        if info["success"] and first is None:
            first = t
        if (first is not None and t >= first + extra) or truncated:
            break
    if first is None:
        return {"first_success": None}
    return {"first_success": first, "at_goal_image": round(dist[first - 1], 4),
            f"min_over_next_{extra}": round(min(dist[first - 1:]), 4)}


def main(argv: list[str] | None = None) -> dict:
    p = argparser(__doc__)
    p.add_argument("--tasks", default="reach-v3", help="comma-separated Meta-World task names")
    p.add_argument("--variations", default="10000-10009", help="goal variations: 'A-B' or comma-separated")
    p.add_argument("--extra", type=int, default=40, help="expert steps after its first success")
    p.add_argument("--out", default="", help="write the results here as JSON")
    args = p.parse_args(argv)
    from envs.metaworld import expert_policy, make_env
    from foresight.checkpoint import atomic_write_json

    if "-" in args.variations:
        lo, hi = (int(x) for x in args.variations.split("-"))
        variations = list(range(lo, hi + 1))
    else:
        variations = [int(x) for x in args.variations.split(",")]
    results: dict = {"command": "python benchmarks/goal_margin.py " + " ".join(argv or sys.argv[1:]), "tasks": {}}
    for task in args.tasks.split(","):
        env = make_env(task, image_size=16, variation_seed=variations[0], max_steps=500)
        policy = expert_policy(task)
        rows = []
        for v in variations:
            env.set_variation(v)
            rows.append({"variation": v, **expert_margin(env, policy, args.extra)})
            print(task, rows[-1])
        env.close()
        at = [r["at_goal_image"] for r in rows if r.get("first_success")]
        results["tasks"][task] = {"per_variation": rows,
                                  "at_goal_image_range": [min(at), max(at)] if at else None}
    if args.out:
        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    cli_main(main)
