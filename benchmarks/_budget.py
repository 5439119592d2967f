"""Shared pieces of the wall-clock-budget quality benchmarks (`harp_quality.py`, `ghvae_quality.py`).

Both scripts sit next to this file, so ``import _budget`` works when they run as ``python benchmarks/<name>.py``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch


def jsonl_logger(path: Path) -> Callable[[dict[str, Any]], None]:
    """A ``log(row)`` that prints ``row`` as JSON and appends it to ``path`` (one line each, flushed)."""
    fh = open(path, "a")

    def log(row: dict[str, Any]) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        fh.write(line + "\n")
        fh.flush()

    return log


def train_for(model: Any, next_batch: Callable[[], dict], minutes: float, *, lr: float, warmup: int,
              log: Callable[[dict], None], log_every: int = 25, digits: int = 4) -> int:
    """AdamW on ``model.trainable_parameters()`` for a wall-clock budget; returns the steps taken.

    Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` to ``0.1 * lr`` over the number of steps the
    budget allows (estimated from the speed of the first 20 steps).
    """
    params = list(model.trainable_parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    budget, t0, step, est_total = minutes * 60, time.perf_counter(), 0, None
    model.train()
    while time.perf_counter() - t0 < budget:
        if step == 20:
            est_total = max(int(budget / ((time.perf_counter() - t0) / 20)), 40)
        if step < warmup:
            factor = (step + 1) / warmup
        elif est_total:
            factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / est_total, 1.0)))
        else:
            factor = 1.0
        for g in opt.param_groups:
            g["lr"] = lr * factor
        loss, metrics = model(next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % log_every == 0:
            log({"stage": model.stage, "step": step, "s": round(time.perf_counter() - t0, 1),
                 "loss": round(float(loss.detach()), 6), **{k: round(v, digits) for k, v in metrics.items()}})
    return step


def first_clip_per_task(tasks: list[int], limit: int) -> list[int]:
    """Indices of the first clip of each distinct task, in order, at most ``limit`` (for strips of several tasks)."""
    picks: list[int] = []
    for i, t in enumerate(tasks):
        if t not in {tasks[j] for j in picks}:
            picks.append(i)
    return picks[:limit]
