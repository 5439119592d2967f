"""The planning benchmark's table: one row per eval_info.json of `plan_to_goal.py`, in Markdown.

    python experiments/planning_table.py runs/planning_benchmark/random/eval_info.json
        ... runs/planning_benchmark/ghvae/eval_info.json --names random,...,GHVAE
    python experiments/planning_table.py runs/planning_benchmark/*/eval_info.json --control

The eval_info.json files come first (or as ``--files A B ...`` / ``files=A,B``). ``A+B`` makes one row of runs of
the same agent and settings over different episodes (a benchmark run in parts); other settings must agree.

Per task: success rate with its 95 % Wilson interval (successes / episodes); then the mean over tasks and the
mean seconds per plan. With ``--control``, a second table: the control check's rank correlation and motion.
"""

from __future__ import annotations

import dataclasses
import glob
import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

from experiments.common import UsageError, cli_main
from foresight.checkpoint import read_json
from foresight.config import build_config


@dataclass
class PlanningTableConfig:
    files: tuple[str, ...] = ()  # eval_info.json files, one per row (also accepted as the leading arguments)
    names: tuple[str, ...] = ()  # comma-separated row names (default: each file's folder name)
    control: bool = False  # also print the control-check table


def split_files(argv: list[str]) -> list[str]:
    """``["a.json", "b.json", "--control"]`` -> ``["--files", "a.json", "b.json", "--control"]`` for `build_config`.

    The files are the arguments that are neither an option (``--key``, ``key=value``) nor an option's value: the
    leading ones, those after a ``key=value`` or a bare flag (``--control``), and existing paths after an option's
    first value. A glob pattern among them that matches files is expanded (sorted).
    """
    flags = {f"{no}{f.name}" for f in dataclasses.fields(PlanningTableConfig) if f.type in (bool, "bool")
             for no in ("", "no_")}
    files: list[str] = []
    rest: list[str] = []
    key, values = None, 0  # the option whose values are being read, and how many it has taken
    for arg in argv:
        if arg.startswith("--"):
            body = arg[2:]
            key = None if "=" in body or body.replace("-", "_") in flags else body.replace("-", "_")
            values = 0
            if key != "files":
                rest.append(arg)
        elif "=" in arg:
            rest.append(arg)
            key = None
        elif key is None or key == "files" or (values > 0 and Path(arg).exists()):
            matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") else []
            files.extend(matches or [arg])
            if key != "files":
                key = None
        else:
            rest.append(arg)
            values += 1
    return (["--files", *files] if files else []) + rest


# config keys that may differ between runs merged into one row (besides how they were run): which episodes
_PART_KEYS = ("tasks", "variations")


def _load(path: str) -> dict:
    """One row's eval_info: a file, or ``A+B+...``: runs of the same agent and settings over different episodes
    (e.g. a benchmark run in parts), merged and re-aggregated."""
    parts = path.split("+")
    infos = []
    for part in parts:
        info = read_json(part, what="eval_info.json (run experiments/plan_to_goal.py first)")
        if not isinstance(info, dict) or "per_task" not in info.get("aggregated", {}):
            raise UsageError(f"{part}: expected a Meta-World eval_info.json with aggregated.per_task")
        infos.append(info)
    if len(infos) == 1:
        return infos[0]
    from experiments.plan_to_goal import RUN_HOW_KEYS, aggregate_metaworld, run_settings

    def settings(info: dict) -> dict:
        return run_settings(info.get("config", {}), ignore=RUN_HOW_KEYS + _PART_KEYS)

    rows, seen, first = [], set(), settings(infos[0])
    for part, info in zip(parts, infos):
        mine = settings(info)
        if mine != first:
            diff = sorted(k for k in set(mine) | set(first) if mine.get(k) != first.get(k))
            raise UsageError(f"{part}: not the same agent and settings as {parts[0]} (differ: {', '.join(diff)})")
        for row in info["per_episode"]:
            key = (row["task"], row["variation"])
            if key in seen:
                raise UsageError(f"{part}: episode {key[0]} variation {key[1]} is also in an earlier file")
            seen.add(key)
            rows.append(row)
    return {"config": infos[0].get("config", {}), "per_episode": rows, "aggregated": aggregate_metaworld(rows)}


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
    cfg = build_config(PlanningTableConfig, split_files(sys.argv[1:] if argv is None else argv))
    if not cfg.files:
        raise UsageError("expected one or more eval_info.json files (the leading arguments, or --files A B ...)")
    infos = [_load(f) for f in cfg.files]
    names = list(cfg.names) if cfg.names else [Path(f.split("+")[0]).parent.name for f in cfg.files]
    if len(names) != len(infos):
        raise UsageError(f"--names: expected {len(infos)} names, got {len(names)}")
    out = success_table(infos, names)
    if cfg.control:
        out += "\n\n" + control_table(infos, names)
    print(out)
    return out


if __name__ == "__main__":
    cli_main(main, PlanningTableConfig, __doc__)
