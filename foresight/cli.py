"""The installed commands (``[project.scripts]`` in pyproject.toml): each runs an experiments/ script as ``__main__``.

    foresight-train            experiments/train_world_model.py
    foresight-eval             experiments/eval_prediction.py
    foresight-plan             experiments/plan_to_goal.py
    foresight-collect          experiments/collect_metaworld.py
    foresight-mt50             experiments/mt50_bc.py
    foresight-export-lerobot   experiments/export_lerobot.py

Running the script module with ``runpy`` (``run_name="__main__"``) executes exactly the code that
``python experiments/<script>.py`` executes, its ``--help``, user-error handling and exit status included, so the
command and the script cannot drift apart. The library never imports this module, and it names the scripts only
by module name at call time: the layering (foresight/ imports nothing of experiments/) holds for every import
of the library; only these console entry points reach up into the installed ``experiments`` package.
"""

from __future__ import annotations

import runpy

__all__ = ["COMMANDS", "run_script", "train", "evaluate", "plan", "collect", "mt50", "export_lerobot"]

COMMANDS = {
    "foresight-train": "experiments.train_world_model",
    "foresight-eval": "experiments.eval_prediction",
    "foresight-plan": "experiments.plan_to_goal",
    "foresight-collect": "experiments.collect_metaworld",
    "foresight-mt50": "experiments.mt50_bc",
    "foresight-export-lerobot": "experiments.export_lerobot",
}


def run_script(module: str) -> None:
    """Run ``module`` as ``__main__`` with the command's arguments (``sys.argv[0]`` becomes the script's path, as
    for ``python experiments/<script>.py``, so messages name the script)."""
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _command(name: str):
    def main() -> None:
        run_script(COMMANDS[name])

    main.__name__ = main.__qualname__ = name.replace("-", "_")
    main.__doc__ = f"``{name}``: python -m {COMMANDS[name]}"
    return main


train = _command("foresight-train")
evaluate = _command("foresight-eval")
plan = _command("foresight-plan")
collect = _command("foresight-collect")
mt50 = _command("foresight-mt50")
export_lerobot = _command("foresight-export-lerobot")
