"""The planning benchmark's table: one row per eval_info.json of `plan_to_goal.py`, in Markdown.

    python experiments/planning_table.py runs/planning_benchmark/random/eval_info.json
        ... runs/planning_benchmark/ghvae/eval_info.json --names random,...,GHVAE

Per task: success rate with its 95 % Wilson interval (successes / episodes); then the mean over tasks and the
mean seconds per plan. With ``--control``, a second table: the control check's rank correlation and motion.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

from experiments.common import UsageError, argparser, cli_main
from foresight.checkpoint import read_json


def _load(path: str) -> dict:
    info = read_json(path, what="eval_info.json (run experiments/plan_to_goal.py first)")
    if not isinstance(info, dict) or "per_task" not in info.get("aggregated", {}):
        raise UsageError(f"{path}: expected a Meta-World eval_info.json with aggregated.per_task")
    return info


def success_table(infos: list[dict], names: list[str]) -> str:
    tasks = list(dict.fromkeys(t for info in infos for t in info["aggregated"]["per_task"]))
    head = "| agent | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " | mean over tasks | s / plan |"
    lines = [head, "|" + "---|" * (len(tasks) + 3)]
    for info, name in zip(infos, names):
        per = info["aggregated"]["per_task"]
        cells = []
        for t in tasks:
            a = per.get(t)
            if a is None:
                cells.append("-")
                continue
            lo, hi = a["success_ci95"]
            cells.append(f"{a['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] ({a['successes']}/{a['episodes']})")
        overall = info["aggregated"]["overall"]
        mean = overall.get("mean_task_success", 0.0)
        cells.append(f"**{mean:.2f}**")
        cells.append(f"{overall.get('plan_seconds_mean', 0.0):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def control_table(infos: list[dict], names: list[str]) -> str:
    lines = ["| agent | task | cost | Spearman (model vs true cost) | Spearman (true cost vs state distance) | "
             "Spearman (model cost vs state distance) | direction accuracy | "
             "predicted / true motion (+x -x +y -y +z -z) |", "|---|---|---|---|---|---|---|---|"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.2f}"

    for info, name in zip(infos, names):
        for task, c in info.get("control_check", {}).items():
            rho = "n/a (constant cost)" if c["spearman"] is None else f"{c['spearman']:.2f}"
            motion = " ".join(f"{m['ratio']:.2f}" for m in c["motion"].values())
            if "embedding_motion" in c:  # model-space cost: the motion in the space the planner scores
                motion += " (embedding: " + " ".join(f"{m['ratio']:.2f}" for m in c["embedding_motion"].values())
                motion += f", direction accuracy {c['embedding_direction_accuracy']:.2f})"
            lines.append(f"| {name} | {task} | {c['cost']} | {rho} | "
                         f"{fmt(c.get('spearman_true_cost_vs_state_distance'))} | "
                         f"{fmt(c.get('spearman_model_cost_vs_state_distance'))} | "
                         f"{c['direction_accuracy']:.2f} | {motion} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparser(__doc__)
    p.add_argument("files", nargs="+", help="eval_info.json files, one per row")
    p.add_argument("--names", default="", help="comma-separated row names (default: each file's folder name)")
    p.add_argument("--control", action="store_true", help="also print the control-check table")
    args = p.parse_args(argv)
    infos = [_load(f) for f in args.files]
    names = args.names.split(",") if args.names else [Path(f).parent.name for f in args.files]
    if len(names) != len(infos):
        raise UsageError(f"--names: expected {len(infos)} names, got {len(names)}")
    out = success_table(infos, names)
    if args.control:
        out += "\n\n" + control_table(infos, names)
    print(out)
    return out


if __name__ == "__main__":
    cli_main(main)
