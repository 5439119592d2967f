"""GHVAE quality on held-out Meta-World demos under a wall-clock budget: greedy per module vs end-to-end.

    python benchmarks/ghvae_quality.py --data /work/data/metaworld_small --out runs/ghvae_quality \
        --phase-minutes 2.5 --finetune-minutes 1.5 --threads 2

Every phase trains with the library's `foresight.train.Trainer` for its wall-clock budget
(``TrainConfig.max_minutes``: AdamW, warm-up, cosine over the budget, gradient clipping) in its own run directory
``<out>/<phase>`` (checkpoints, metrics.jsonl with held-out losses, sample videos); a killed run rerun with the same
command resumes the unfinished phase from its checkpoint and skips finished ones (a finished phase is not trained
again with another budget: use a new ``--out``). Each run directory loads as a model
(``foresight.load(<out>/greedy_module2)``).

1. Greedy (``greedy_module{k}``): phase k trains module k only (modules < k frozen; the Trainer caches their
   features once per phase through ``GHVAE.stage_dataset``), each phase for ``--phase-minutes``; after each phase
   the stack is evaluated at depth k (quality per number of modules).
2. Optional end-to-end fine-tune of the greedy stack (``greedy_finetuned``, ``--finetune-minutes``).
3. The same architecture trained end-to-end from scratch (``e2e_scratch``: stage ``finetune`` on a fresh model)
   for the summed budget of the greedy phases.

Evaluation: test-split clips (2 context + 10 future, spread over all test episodes), actions given, PSNR / SSIM
over the 10 predicted frames, next to copying the last context frame. Samples are drawn from the learned prior
(seeded); reported as the mean over ``--samples`` samples and best-of-samples. Writes results.json (with each
phase's steps, train_seconds and run directory), log.jsonl and a PNG strip (context | truth | samples) of held-out
demos.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

import foresight
from foresight.data.clips import ClipDataset
from foresight.data.episodes import EpisodeDataset
from foresight.metrics.image import psnr, ssim
from foresight.models.ghvae import GHVAE, GHVAEConfig
from foresight.train import TrainConfig
from foresight.viz import save_strip

from _budget import first_clip_per_task, jsonl_logger, run_phase, untrained

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


@torch.no_grad()
def evaluate(model: GHVAE, context, actions, truth, *, samples: int, seed: int) -> tuple[dict, torch.Tensor]:
    t0 = time.perf_counter()
    pred = model.predict(context, actions, num_samples=samples, seed=seed).cpu()  # [B, S, F, 3, H, W]
    truth_s = truth[:, None].expand_as(pred)
    p, s = psnr(pred, truth_s).mean(-1), ssim(pred, truth_s).mean(-1)  # [B, S]
    return {"depth": model.depth, "psnr": round(float(p.mean()), 3), "ssim": round(float(s.mean()), 4),
            "psnr_best_of_samples": round(float(p.max(1).values.mean()), 3),
            "ssim_best_of_samples": round(float(s.max(1).values.mean()), 4),
            "per_frame_psnr": [round(float(v), 2) for v in psnr(pred, truth_s).mean((0, 1))],
            "seconds": round(time.perf_counter() - t0, 1)}, pred


@dataclass
class GHVAEQualityConfig:
    """GHVAE quality under a wall-clock budget (each phase: foresight.train.Trainer with max_minutes)."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in GHVAEConfig.PRESETS}

    data: str = "/work/data/metaworld_small"  # episode dataset (experiments/collect_metaworld.py)
    out: str = "runs/ghvae_quality"           # run directory (one Trainer run per phase under it, strip, results)
    preset: str = "quick"                     # model preset: tiny | quick | paper
    image_size: int | None = None             # model frame size (default: the preset's; must match the data)
    modules: int | None = None                # K (default: the preset's)
    phase_minutes: float = 2.5                # budget of each greedy phase (TrainConfig.max_minutes; 0: not trained)
    finetune_minutes: float = 1.5             # budget of the end-to-end fine-tune (TrainConfig.max_minutes); 0 skips it
    e2e_minutes: float | None = None          # budget of end-to-end from scratch (default: K * phase-minutes; 0 skips it)
    max_steps: int = 1_000_000                # step cap of each phase (TrainConfig.steps); the minutes budget normally ends it first
    train_future: int = 6                     # future frames per training clip (eval uses 10)
    threads: int = 2                          # torch CPU threads
    device: str = "auto"                      # TrainConfig.device: auto (CUDA if present) | cpu | cuda
    batch: int = 8                            # clips per batch (TrainConfig.batch_size)
    lr: float = 1e-3                          # peak learning rate (TrainConfig.lr; the fine-tune uses 0.3x)
    warmup: int = 20                          # linear lr warm-up steps of each phase (TrainConfig.warmup_steps)
    save_every: int = 200                     # steps between checkpoints of a phase (TrainConfig.save_every; also at its end)
    eval_every: int = 0                       # steps between held-out losses in metrics.jsonl (TrainConfig.eval_every; 0: at the end)
    eval_clips: int = 32                      # held-out clips evaluated
    samples: int = 2                          # prior samples per held-out clip (best one scored)
    seed: int = 0                             # random seed (TrainConfig.seed: data order, model initialisation)


def main(argv: list[str] | None = None) -> None:
    args = build_config(GHVAEQualityConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = jsonl_logger(out / "log.jsonl")

    cfg = foresight.preset(GHVAEConfig, args.preset)
    if args.modules:
        cfg = dataclasses.replace(cfg, num_modules=args.modules)
    if args.image_size:
        cfg = dataclasses.replace(cfg, image_size=args.image_size)
    k_total, c = cfg.num_modules, cfg.context_frames
    e2e_minutes = args.e2e_minutes if args.e2e_minutes is not None else k_total * args.phase_minutes
    train_eps, test_eps = EpisodeDataset(args.data, split="train"), EpisodeDataset(args.data, split="test")
    train = ClipDataset(train_eps, context=c, future=args.train_future, window_step=1)
    test = ClipDataset(test_eps, context=c, future=10, window_step=1, task_names=train.task_names)
    idx = np.linspace(0, len(test) - 1, min(args.eval_clips, len(test))).round().astype(int)
    batch = test.get_batch(idx, augment=False)
    frames, actions = batch["frames"], batch["actions"]
    context, truth, fut_actions = frames[:, :c], frames[:, c:], actions[:, c - 1:]
    copy_last = context[:, -1:].expand_as(truth)
    results = {
        "budget": {"phase_minutes": args.phase_minutes, "finetune_minutes": args.finetune_minutes,
                   "e2e_minutes": e2e_minutes, "max_steps": args.max_steps, "threads": args.threads,
                   "batch": args.batch, "train_clip": f"{c}+{args.train_future}", "eval_clip": f"{c}+10",
                   "trainer": "foresight.train.Trainer, TrainConfig.max_minutes per phase"},
        "data": {"train_episodes": len(train_eps), "test_episodes": len(test_eps), "train_clips": len(train),
                 "eval_clips": len(idx), "tasks": train.task_names},
        "config": foresight.config.to_dict(cfg),
        "copy_last": {"psnr": round(float(psnr(copy_last, truth).mean()), 3),
                      "ssim": round(float(ssim(copy_last, truth).mean()), 4),
                      "per_frame_psnr": [round(float(v), 2) for v in psnr(copy_last, truth).mean(0)]},
        "greedy": [], "finetune": None, "e2e_scratch": None,
    }
    log({k: results[k] for k in ("budget", "data", "copy_last")})

    def phase(model: GHVAE, name: str, stage: str, minutes: float, lr: float) -> tuple[GHVAE, dict[str, Any]]:
        """Train ``stage`` for ``minutes`` with the Trainer in ``<out>/<name>`` (resumed / skipped on a rerun)."""
        if minutes <= 0:
            return model.set_stage(stage), untrained("0 minutes")
        config = TrainConfig(steps=args.max_steps, max_minutes=minutes, lr=lr, warmup_steps=args.warmup,
                             batch_size=args.batch, seed=args.seed, device=args.device, save_every=args.save_every,
                             eval_every=args.eval_every, eval_batches=4, log_every=5)
        # held-out losses on the 2+10 test clips (the Trainer caches their lower-module features too)
        return run_phase(model, train, config, run_dir=out / name, stage=stage, eval_dataset=test, log=log)

    def write_results() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    # ---- greedy phases
    torch.manual_seed(args.seed)
    model = GHVAE(cfg)
    preds = None
    for k in range(1, k_total + 1):
        model, summary = phase(model, f"greedy_module{k}", f"module{k}", args.phase_minutes, args.lr)
        row, preds = evaluate(model, context, fut_actions, truth, samples=args.samples, seed=args.seed)
        row.update({"module": k, "steps": summary["steps"], "train_seconds": summary["train_seconds"],
                    "run_dir": summary["run_dir"], "cache_s": summary.get("setup_s"),
                    "cache_mb": summary.get("cache_mb", 0.0)})
        results["greedy"].append(row)
        log({"greedy": row})
        write_results()

    # ---- optional end-to-end fine-tune of the greedy stack
    if args.finetune_minutes > 0 and cfg.finetune:
        model, summary = phase(model, "greedy_finetuned", "finetune", args.finetune_minutes, args.lr * 0.3)
        row, preds = evaluate(model, context, fut_actions, truth, samples=args.samples, seed=args.seed)
        row.update({k: summary[k] for k in ("steps", "train_seconds", "run_dir")})
        results["finetune"] = row
        log({"finetune": row})

    # PNG strip from the final greedy model: one demo of each of a few tasks.
    tasks = batch["task"].tolist()
    picks = first_clip_per_task(tasks, 4)
    rows = []
    for i in picks:
        pad = torch.zeros_like(context[i])
        rows.append(torch.cat([context[i], truth[i]]))
        rows += [torch.cat([pad, preds[i, s]]) for s in range(preds.shape[1])]
    save_strip(out / "ghvae_strip.png", rows)
    log({"strip": str(out / "ghvae_strip.png"),
         "rows": f"per demo: [context | truth], then {preds.shape[1]} prior samples [blank | prediction]",
         "tasks": [test.task_names[tasks[i]] for i in picks]})
    write_results()

    # ---- the same architecture trained end to end from scratch
    if e2e_minutes > 0:
        torch.manual_seed(args.seed)
        scratch, summary = phase(GHVAE(cfg), "e2e_scratch", "finetune", e2e_minutes, args.lr)
        row, _ = evaluate(scratch, context, fut_actions, truth, samples=args.samples, seed=args.seed)
        row.update({k: summary[k] for k in ("steps", "train_seconds", "run_dir")})
        results["e2e_scratch"] = row
        log({"e2e_scratch": row})
    write_results()


if __name__ == "__main__":
    cli_main(main, GHVAEQualityConfig, __doc__)
