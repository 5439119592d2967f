"""GHVAE quality on held-out Meta-World demos under a wall-clock budget: greedy per module vs end-to-end.

    python benchmarks/ghvae_quality.py --data /work/data/metaworld_small --out runs/ghvae_quality \
        --phase-minutes 2.5 --finetune-minutes 1.5 --threads 2

1. Greedy: phase k trains module k only (modules < k frozen, their features cached once per phase), each phase
   for ``--phase-minutes``; after each phase the stack is evaluated at depth k (quality per number of modules).
2. Optional end-to-end fine-tune of the greedy stack (``--finetune-minutes``).
3. The same architecture trained end-to-end from scratch (stage ``finetune`` on a fresh model) for the summed
   budget of the greedy phases.

Evaluation: test-split clips (2 context + 10 future, spread over all test episodes), actions given, PSNR / SSIM
over the 10 predicted frames, next to copying the last context frame. Samples are drawn from the learned prior
(seeded); reported as the mean over ``--samples`` samples and best-of-samples. Writes results.json, log.jsonl and
a PNG strip (context | truth | samples) of held-out demos.
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
from foresight.viz import save_strip

from _budget import first_clip_per_task, jsonl_logger, train_for as _train_for

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


def train_for(model, dataset, minutes, *, lr, batch, rng, log, warmup=20):
    """Train the current stage on random batches of ``dataset`` for a wall-clock budget."""
    return _train_for(model, lambda: dataset.get_batch(rng.integers(0, len(dataset), batch), rng=rng), minutes,
                      lr=lr, warmup=warmup, log=log, log_every=5, digits=5)


@torch.no_grad()
def evaluate(model: GHVAE, context, actions, truth, *, samples: int, seed: int) -> tuple[dict, torch.Tensor]:
    t0 = time.perf_counter()
    pred = model.predict(context, actions, num_samples=samples, seed=seed)  # [B, S, F, 3, H, W]
    truth_s = truth[:, None].expand_as(pred)
    p, s = psnr(pred, truth_s).mean(-1), ssim(pred, truth_s).mean(-1)  # [B, S]
    return {"depth": model.depth, "psnr": round(float(p.mean()), 3), "ssim": round(float(s.mean()), 4),
            "psnr_best_of_samples": round(float(p.max(1).values.mean()), 3),
            "ssim_best_of_samples": round(float(s.max(1).values.mean()), 4),
            "per_frame_psnr": [round(float(v), 2) for v in psnr(pred, truth_s).mean((0, 1))],
            "seconds": round(time.perf_counter() - t0, 1)}, pred


@dataclass
class GHVAEQualityConfig:
    """GHVAE quality under a wall-clock budget."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in GHVAEConfig.PRESETS}

    data: str = "/work/data/metaworld_small"  # episode dataset (experiments/collect_metaworld.py)
    out: str = "runs/ghvae_quality"           # run directory (models, metrics, strip)
    preset: str = "quick"                     # model preset: tiny | quick | paper
    modules: int | None = None                # K (default: the preset's)
    phase_minutes: float = 2.5                # budget of each greedy phase
    finetune_minutes: float = 1.5             # 0 skips the end-to-end fine-tune
    e2e_minutes: float | None = None          # default: K * phase-minutes
    train_future: int = 6                     # future frames per training clip (eval uses 10)
    threads: int = 2                          # torch CPU threads
    batch: int = 8                            # clips per batch
    lr: float = 1e-3                          # peak learning rate
    warmup: int = 20                          # linear lr warm-up steps of each phase
    eval_clips: int = 32                      # held-out clips evaluated
    samples: int = 2                          # prior samples per held-out clip (best one scored)
    seed: int = 0                             # random seed


def main(argv: list[str] | None = None) -> None:
    args = build_config(GHVAEQualityConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = jsonl_logger(out / "log.jsonl")

    cfg = foresight.preset(GHVAEConfig, args.preset)
    if args.modules:
        cfg = dataclasses.replace(cfg, num_modules=args.modules)
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
                   "e2e_minutes": e2e_minutes, "threads": args.threads, "batch": args.batch,
                   "train_clip": f"{c}+{args.train_future}", "eval_clip": f"{c}+10"},
        "data": {"train_episodes": len(train_eps), "test_episodes": len(test_eps), "train_clips": len(train),
                 "eval_clips": len(idx), "tasks": train.task_names},
        "config": foresight.config.to_dict(cfg),
        "copy_last": {"psnr": round(float(psnr(copy_last, truth).mean()), 3),
                      "ssim": round(float(ssim(copy_last, truth).mean()), 4),
                      "per_frame_psnr": [round(float(v), 2) for v in psnr(copy_last, truth).mean(0)]},
        "greedy": [], "finetune": None, "e2e_scratch": None,
    }
    log({k: results[k] for k in ("budget", "data", "copy_last")})
    rng = np.random.default_rng(args.seed)

    # ---- greedy phases
    torch.manual_seed(args.seed)
    model = GHVAE(cfg)
    preds = None
    for k in range(1, k_total + 1):
        model.set_stage(f"module{k}")
        t0 = time.perf_counter()
        data = model.stage_dataset(train)
        cache_s = round(time.perf_counter() - t0, 1)
        cache_mb = round(data.nbytes() / 2**20, 1) if hasattr(data, "nbytes") else 0.0
        steps = train_for(model, data, args.phase_minutes, lr=args.lr, batch=args.batch, rng=rng, log=log,
                          warmup=args.warmup)
        del data
        row, preds = evaluate(model, context, fut_actions, truth, samples=args.samples, seed=args.seed)
        row.update({"module": k, "steps": steps, "cache_s": cache_s, "cache_mb": cache_mb})
        results["greedy"].append(row)
        log({"greedy": row})
        model.save_pretrained(out / f"greedy_module{k}")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    # ---- optional end-to-end fine-tune of the greedy stack
    if args.finetune_minutes > 0 and cfg.finetune:
        model.set_stage("finetune")
        steps = train_for(model, train, args.finetune_minutes, lr=args.lr * 0.3, batch=args.batch, rng=rng, log=log,
                         warmup=args.warmup)
        row, preds = evaluate(model, context, fut_actions, truth, samples=args.samples, seed=args.seed)
        row["steps"] = steps
        results["finetune"] = row
        log({"finetune": row})
        model.save_pretrained(out / "greedy_finetuned")

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
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    # ---- the same architecture trained end to end from scratch
    torch.manual_seed(args.seed)
    scratch = GHVAE(cfg).set_stage("finetune")
    steps = train_for(scratch, train, e2e_minutes, lr=args.lr, batch=args.batch, rng=rng, log=log,
                      warmup=args.warmup)
    row, _ = evaluate(scratch, context, fut_actions, truth, samples=args.samples, seed=args.seed)
    row["steps"] = steps
    results["e2e_scratch"] = row
    log({"e2e_scratch": row})
    scratch.save_pretrained(out / "e2e_scratch")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli_main(main, GHVAEQualityConfig, __doc__)
