"""Shared pieces of the quality benchmarks (`harp_quality.py`, `ghvae_quality.py`).

Every training phase of both scripts is one `foresight.train.Trainer` run in its own directory
(``<out>/<phase>``), budgeted by ``TrainConfig.max_minutes``: it writes checkpoints and ``metrics.jsonl``, a killed
run resumes from ``<out>/<phase>/checkpoints/last``, and a phase whose Trainer finished (its ``trainer.json``
says ``finished``) is skipped on a rerun and its final model loaded instead.

Both scripts sit next to this file, so ``import _budget`` works when they run as ``python benchmarks/<name>.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import foresight
from foresight import checkpoint as ckpt
from foresight.train import Trainer, TrainConfig, select_device

PHASE_FILE = "phase.json"  # the phase's summary, written when its Trainer has finished


def jsonl_logger(path: Path) -> Callable[[dict[str, Any]], None]:
    """A ``log(row)`` that prints ``row`` as JSON and appends it to ``path`` (one line each, flushed)."""
    fh = open(path, "a")

    def log(row: dict[str, Any]) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        fh.write(line + "\n")
        fh.flush()

    return log


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``trainer.json`` of ``run_dir/checkpoints/last`` when that Trainer run finished (steps cap or minutes
    budget reached), else None (no checkpoint yet, or one to resume from)."""
    path = Path(run_dir) / "checkpoints" / ckpt.LAST_LINK / ckpt.TRAINING_STATE_DIR / "trainer.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("finished") else None


def run_phase(model: Any, dataset: Any, config: TrainConfig, *, run_dir: Path, stage: str,
              eval_dataset: Any = None, log: Callable[[dict], None]) -> tuple[Any, dict[str, Any]]:
    """Train ``stage`` of ``model`` with the Trainer in ``run_dir``; returns (the trained model in eval mode, the
    phase's summary: steps, train_seconds, run_dir, ...).

    ``dataset`` is the clip dataset (or a function building it, called only when the phase trains); the Trainer
    turns it into the stage's data itself (``model.stage_dataset``: HARP's cached codes, GHVAE's cached lower-module
    features). A checkpoint of an unfinished run is resumed; a finished phase is not trained again: its final model
    is loaded from ``run_dir`` (a new ``--out`` trains with other budgets).
    """
    run_dir = Path(run_dir)
    record = finished_record(run_dir)
    if record is not None:
        summary: dict[str, Any] = {}
        if (run_dir / PHASE_FILE).is_file():
            summary.update(json.loads((run_dir / PHASE_FILE).read_text()))
        summary.update(steps=int(record["step"]), train_seconds=round(float(record["train_seconds"]), 2),
                       run_dir=str(run_dir), skipped=True)
        log({"phase": run_dir.name, "stage": stage, "note": "finished earlier: not trained again", **summary})
        loaded = foresight.load(run_dir, map_location=select_device(config.device))
        return loaded.eval(), summary
    if callable(dataset) and not hasattr(dataset, "__getitem__"):
        dataset = dataset()
    t0 = time.perf_counter()
    trainer = Trainer(model, dataset, config=config, run_dir=run_dir, stage=stage, eval_dataset=eval_dataset)
    setup_s = round(time.perf_counter() - t0, 1)  # mostly the stage caches (train and held-out)
    start = trainer.step
    log({"phase": run_dir.name, "stage": stage, "train_items": len(trainer.train_dataset), "setup_s": setup_s,
         "resumed_at_step": start, "max_minutes": config.max_minutes, "steps_cap": config.steps})
    trainer.fit()
    summary = {"steps": trainer.step, "train_seconds": round(trainer.train_seconds, 2), "run_dir": str(run_dir),
               "resumed_at_step": start, "setup_s": setup_s, "train_items": len(trainer.train_dataset)}
    if hasattr(trainer.train_dataset, "nbytes"):
        summary["cache_mb"] = round(trainer.train_dataset.nbytes() / 2**20, 1)
    ckpt.atomic_write_text(run_dir / PHASE_FILE, json.dumps(summary, indent=2) + "\n")
    log({"phase": run_dir.name, "stage": stage, **summary})
    return trainer.model.eval(), summary


def untrained(reason: str) -> dict[str, Any]:
    """The summary of a phase that was not run (a budget of 0 minutes)."""
    return {"steps": 0, "train_seconds": 0.0, "run_dir": None, "note": reason}


def first_clip_per_task(tasks: list[int], limit: int) -> list[int]:
    """Indices of the first clip of each distinct task, in order, at most ``limit`` (for strips of several tasks)."""
    picks: list[int] = []
    for i, t in enumerate(tasks):
        if t not in {tasks[j] for j in picks}:
            picks.append(i)
    return picks[:limit]
