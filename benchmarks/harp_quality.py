"""HARP quality on held-out Meta-World demos under a wall-clock budget (CPU-sized ``quick`` preset).

    python benchmarks/harp_quality.py --data /work/data/metaworld_small --out runs/harp_quality \
        --tokenizer-minutes 10 --transformer-minutes 15 --threads 2

Stage 1 trains the VQ-GAN on frames of the train split, stage 2 the transformer on cached codes of train clips
(context 2 + future 10), each for a fixed wall-clock budget with AdamW (warm-up, cosine over the budget).
Reports tokenizer reconstruction PSNR on all test-split frames and action-conditioned prediction PSNR / SSIM over
the 10 future frames of test clips next to the copy-last-context-frame baseline; writes results.json, a PNG
strip (context | truth | prediction rows for demos of different tasks) and the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

import foresight
from foresight.checkpoint import atomic_write_json
from foresight.data.clips import ClipDataset, shift_augment
from foresight.data.episodes import EpisodeDataset
from foresight.metrics.image import psnr, ssim
from foresight.models.harp import CachedCodes, Harp, HarpConfig
from foresight.viz import save_strip

from _budget import first_clip_per_task, jsonl_logger, train_for

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


def shifted_copy(clips: ClipDataset, max_shift: int, rng: np.random.Generator) -> ClipDataset:
    """A copy of ``clips`` whose stored frames are translated, one random shift per episode (replicate-padded):
    every clip of the copy is a translated clip, and the copy still caches frame by frame."""
    out = copy.copy(clips)
    out.frames = clips.frames.copy()
    for lo, hi in zip(clips.episode_start[:-1], clips.episode_start[1:]):
        out.frames[lo:hi] = shift_augment(clips.frames[lo:hi][None], max_shift, rng)[0]
    return out


@dataclass
class HarpQualityConfig:
    """HARP quality under a wall-clock budget."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in HarpConfig.PRESETS}

    data: str = "/work/data/metaworld_small"  # episode dataset (experiments/collect_metaworld.py)
    out: str = "runs/harp_quality"            # run directory (models, metrics, strip)
    preset: str = "quick"                     # model preset: tiny | quick | paper
    tokenizer_minutes: float = 10             # wall-clock budget of the tokenizer stage
    transformer_minutes: float = 15           # wall-clock budget of the transformer stage
    threads: int = 2                          # torch CPU threads
    batch: int = 8                            # clips per batch
    eval_clips: int = 40                      # held-out clips evaluated
    cache_step: int = 1                       # window step of the stage-2 clips (cached once)
    seed: int = 0                             # random seed
    eval_only: str | None = None              # evaluate a saved model directory instead of training
    init: str | None = None
    """start from a saved model directory (e.g. an earlier run's tokenizer_model): its tokenizer trains on for
    --tokenizer-minutes; with 0 the tokenizer is kept and so is the transformer, which trains on, otherwise the
    transformer starts from scratch"""
    transformer_lr: float = 1e-3              # peak learning rate of stage 2 (warm-up, then cosine to a tenth of it)
    disc_start: int | None = None  # tokenizer step at which the GAN term switches on (default: the preset's / saved model's)
    attn_dropout: float | None = None  # transformer attention-probability dropout (default: the preset's / saved model's)
    augment_copies: int = 0
    """stage 2 also trains on this many translated copies of the training episodes (HARP's translation augmentation,
    one random shift of up to --augment-shift pixels per episode and copy, cached once like the original)"""
    augment_shift: int = 4                    # random translation in pixels of the training clips


def main(argv: list[str] | None = None) -> None:
    args = build_config(HarpQualityConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = jsonl_logger(out / "log.jsonl")

    cfg = foresight.preset(HarpConfig, args.preset)
    c, f = cfg.context_frames, cfg.future_frames
    train_eps, test_eps = EpisodeDataset(args.data, split="train"), EpisodeDataset(args.data, split="test")
    train = ClipDataset(train_eps, context=c, future=f, window_step=1)
    test = ClipDataset(test_eps, context=c, future=f, window_step=1, task_names=train.task_names)
    log({"train_episodes": len(train_eps), "test_episodes": len(test_eps), "train_clips": len(train),
         "test_clips": len(test), "config": foresight.config.to_dict(cfg)})
    rng = np.random.default_rng(args.seed)
    model = Harp(cfg)
    if args.init:
        model = foresight.load(args.init)
        cfg = model.config
        log({"init": args.init, "tokenizer_steps_before": int(model.tokenizer.step)})
    if args.disc_start is not None:
        model.config.disc_start = cfg.disc_start = args.disc_start
    if args.attn_dropout is not None:  # takes effect for the transformer built below / a fresh one
        cfg.attn_dropout = args.attn_dropout
        if not args.init:
            model = Harp(cfg)

    test_frames = torch.cat([torch.from_numpy(e["frames"]).permute(0, 3, 1, 2).float() / 255 for e in test_eps])
    if args.eval_only:
        model = foresight.load(args.eval_only)
        steps1 = steps2 = None
    else:
        # ---- stage 1: tokenizer
        model.set_stage("tokenizer")
        steps1 = 0
        if args.tokenizer_minutes > 0:
            steps1 = train_for(model, lambda: train.get_batch(rng.integers(0, len(train), args.batch), rng=rng),
                               args.tokenizer_minutes, lr=1e-3, warmup=50, log=log)
        model.eval()
        model.save_pretrained(out / "tokenizer_model")  # lets a later run (--init) continue from here
        if args.init and steps1 > 0:  # the codes have changed: stage 2 starts from a fresh transformer
            fresh = Harp(cfg)
            fresh.tokenizer.load_state_dict(model.tokenizer.state_dict())
            model = fresh.eval()
        with torch.no_grad():
            rec = model.decode(model.encode(test_frames))
        rec_psnr = float(psnr(rec, test_frames).mean())
        log({"tokenizer_steps": steps1, "tokenizer_steps_total": int(model.tokenizer.step),
             "test_frames": len(test_frames), "reconstruction_psnr": rec_psnr})

        # ---- stage 2: transformer on cached codes (clips every cache_step-th start: fewer frames to encode once)
        model.set_stage("transformer")
        sub = ClipDataset(train_eps, context=c, future=f, window_step=args.cache_step, task_names=train.task_names)
        t0 = time.perf_counter()
        cached = model.stage_dataset(sub, "transformer")
        for _ in range(args.augment_copies):
            more = model.stage_dataset(shifted_copy(sub, args.augment_shift, rng), "transformer")
            cached = CachedCodes(torch.cat([cached.codes, more.codes]),
                                 {k: torch.cat([v, more.extras[k]]) for k, v in cached.extras.items()})
        log({"cached_clips": len(cached), "cache_s": round(time.perf_counter() - t0, 1)})
        keys = [k for k in ("codes", "actions", "context") if k in cached.extras or k == "codes"]

        def next_codes():
            idx = rng.integers(0, len(cached), args.batch).tolist()
            return {k: torch.stack([cached[i][k] for i in idx]) for k in keys}

        steps2 = train_for(model, next_codes, args.transformer_minutes, lr=args.transformer_lr, warmup=50, log=log)
        model.eval()
        model.save_pretrained(out / "model")

    # ---- evaluation on held-out clips, spread over all test episodes
    idx = np.linspace(0, len(test) - 1, min(args.eval_clips, len(test))).round().astype(int)
    batch = test.get_batch(idx, augment=False)
    frames, actions = batch["frames"], batch["actions"]
    context, truth, fut_actions = frames[:, :c], frames[:, c:], actions[:, c - 1:]
    copy_last = context[:, -1:].expand_as(truth)
    model.eval()
    if args.eval_only:
        with torch.no_grad():
            rec_psnr = float(psnr(model.decode(model.encode(test_frames)), test_frames).mean())
    results = {"init": args.init, "tokenizer_steps": steps1,
               "tokenizer_steps_total": int(model.tokenizer.step), "transformer_steps": steps2,
               "reconstruction_psnr": rec_psnr,
               "eval_clips": len(idx), "budget_minutes": [args.tokenizer_minutes, args.transformer_minutes],
               "threads": args.threads}
    with torch.no_grad():  # teacher-forced cross-entropy on the held-out clips: over-fitting shows here first
        codes = model.encode(frames)  # [B, C+F, h, w]
        logits = model.transformer(codes, context if model.config.context_resnet else None, fut_actions)  # [B, F*N, K]
    target = codes[:, c:].flatten(1)  # [B, F*N]
    hit = (logits.argmax(-1) == target).float().view(len(idx), f, -1)
    results["heldout"] = {"ce": round(float(F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())), 4),
                          "code_accuracy": round(float(hit.mean()), 4)}
    # how often the true code equals the teacher-forced argmax, and equals the last context frame's code there
    results["heldout"]["code_accuracy_per_frame"] = [round(float(v), 3) for v in hit.mean((0, 2))]
    results["heldout"]["copy_code_accuracy_per_frame"] = [
        round(float(v), 3) for v in (codes[:, c:] == codes[:, c - 1:c]).float().mean((0, 2, 3))]
    results["copy_last"] = {"psnr": float(psnr(copy_last, truth).mean()), "ssim": float(ssim(copy_last, truth).mean())}
    with torch.no_grad():
        recon_truth = model.decode(model.encode(truth))
    results["tokenizer_ceiling"] = {"psnr": float(psnr(recon_truth, truth).mean()),
                                    "ssim": float(ssim(recon_truth, truth).mean())}
    preds = {}
    for name, top_k in (("harp_topk10", 10), ("harp_greedy", 1)):
        model.config.top_k = top_k
        t0 = time.perf_counter()
        pred = model.predict(context, fut_actions, seed=args.seed)[:, 0]  # [B, F, 3, H, W]
        preds[name] = pred
        results[name] = {"psnr": float(psnr(pred, truth).mean()), "ssim": float(ssim(pred, truth).mean()),
                         "per_frame_psnr": [round(float(v), 2) for v in psnr(pred, truth).mean(0)],
                         "seconds": round(time.perf_counter() - t0, 1)}
    model.config.top_k = cfg.top_k
    results["copy_last"]["per_frame_psnr"] = [round(float(v), 2) for v in psnr(copy_last, truth).mean(0)]
    log(results)
    atomic_write_json(out / "results.json", results)

    # ---- PNG strip: one clip from each of a few different tasks
    tasks = batch["task"].tolist()
    picks = first_clip_per_task(tasks, 4)
    rows = []
    for i in picks:
        pad = torch.zeros_like(context[i])
        rows += [torch.cat([context[i], truth[i]]), torch.cat([pad, preds["harp_topk10"][i]])]
    save_strip(out / "harp_strip.png", rows)
    log({"strip": str(out / "harp_strip.png"), "rows": "per demo: [context | truth], [blank | HARP top-k 10]",
         "tasks": [test.task_names[tasks[i]] for i in picks]})


if __name__ == "__main__":
    cli_main(main, HarpQualityConfig, __doc__)
