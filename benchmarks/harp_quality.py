"""HARP quality on held-out Meta-World demos under a wall-clock budget (CPU-sized ``quick`` preset).

    python benchmarks/harp_quality.py --data /work/data/metaworld_small --out runs/harp_quality \
        --tokenizer-minutes 10 --transformer-minutes 15 --threads 2

Both stages train with the library's `foresight.train.Trainer`, each for its wall-clock budget
(``TrainConfig.max_minutes``: AdamW, warm-up, cosine over the budget, gradient clipping), in ``<out>/tokenizer``
and ``<out>/transformer`` (checkpoints, metrics.jsonl with held-out losses, sample videos). Stage 1 trains the
VQ-GAN on frames of the train split, stage 2 the transformer on codes of train clips (context 2 + future 10)
that the Trainer caches once with the frozen tokenizer (``Harp.stage_dataset``). A killed run rerun with the same
command resumes the unfinished stage from its checkpoint and skips finished ones (a finished stage is not trained
again with another budget: use a new ``--out``).
Reports tokenizer reconstruction PSNR on all test-split frames and action-conditioned prediction PSNR / SSIM over
the 10 future frames of test clips next to the copy-last-context-frame baseline; writes results.json (with each
stage's steps, train_seconds and run directory), a PNG strip (context | truth | prediction rows for demos of
different tasks) and the model (``<out>/tokenizer_model`` after stage 1, ``<out>/model`` at the end).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import dataclasses
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
from foresight.models.harp import Harp, HarpConfig
from foresight.train import TrainConfig, select_device
from foresight.viz import save_strip

from _budget import first_clip_per_task, jsonl_logger, run_phase, untrained

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


def with_shifted_copies(clips: ClipDataset, copies: int, max_shift: int, *, window_step: int,
                        seed: int) -> ClipDataset:
    """``clips`` plus ``copies`` translated copies of its episodes (one random shift of up to ``max_shift`` pixels
    per episode and copy, replicate-padded) as one plain `ClipDataset`, so the Trainer's code cache still encodes
    it frame by frame. ``copies=0``: ``clips`` itself."""
    if copies <= 0:
        return clips
    rng = np.random.default_rng(seed)
    bounds = list(zip(clips.episode_start[:-1], clips.episode_start[1:]))
    episodes = []
    for copy in range(copies + 1):
        for e, (lo, hi) in enumerate(bounds):
            frames = clips.frames[lo:hi]  # [T, 3, H, W] uint8
            if copy:
                frames = shift_augment(frames[None], max_shift, rng)[0]
            ep = {"frames": frames.transpose(0, 2, 3, 1), "actions": clips.actions_raw[lo:hi - 1],
                  "task": clips.episode_tasks[e]}
            if clips.states is not None:
                ep["states"] = clips.states[lo:hi]
            episodes.append(ep)
    return ClipDataset(episodes, context=clips.context, future=clips.future, stride=clips.stride,
                       window_step=window_step, action_reduce=clips.action_reduce, task_names=clips.task_names)


@dataclass
class HarpQualityConfig:
    """HARP quality under a wall-clock budget (each stage: foresight.train.Trainer with max_minutes)."""

    # --preset NAME sets the model preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in HarpConfig.PRESETS}

    data: str = "/work/data/metaworld_small"  # episode dataset (experiments/collect_metaworld.py)
    out: str = "runs/harp_quality"            # run directory (stage runs <out>/tokenizer, <out>/transformer, models, strip)
    preset: str = "quick"                     # model preset: tiny | quick | paper
    image_size: int | None = None             # model frame size (default: the preset's; must match the data)
    tokenizer_minutes: float = 10             # wall-clock budget of the tokenizer stage (TrainConfig.max_minutes; 0: not trained)
    transformer_minutes: float = 15           # wall-clock budget of the transformer stage (TrainConfig.max_minutes; 0: not trained)
    max_steps: int = 1_000_000                # step cap of each stage (TrainConfig.steps); the minutes budget normally ends it first
    threads: int = 2                          # torch CPU threads
    device: str = "auto"                      # TrainConfig.device: auto (CUDA if present) | cpu | cuda
    batch: int = 8                            # clips per batch (TrainConfig.batch_size)
    save_every: int = 200                     # steps between checkpoints of a stage (TrainConfig.save_every; also at its end)
    eval_every: int = 500                     # steps between held-out losses in metrics.jsonl (TrainConfig.eval_every; 0: at the end)
    eval_clips: int = 40                      # held-out clips evaluated
    cache_step: int = 1                       # window step of the stage-2 clips (their codes are cached once)
    seed: int = 0                             # random seed (TrainConfig.seed: data order; also the augmentation shifts)
    eval_only: str | None = None              # evaluate a saved model directory instead of training
    init: str | None = None
    """start from a saved model directory (e.g. an earlier run's tokenizer_model): its tokenizer trains on for
    --tokenizer-minutes; with 0 the tokenizer is kept and so is the transformer, which trains on, otherwise the
    transformer starts from scratch"""
    transformer_lr: float = 1e-3              # peak learning rate of stage 2 (TrainConfig.lr: warm-up, then cosine to a tenth of it)
    disc_start: int | None = None  # tokenizer step at which the GAN term switches on (default: the preset's / saved model's)
    attn_dropout: float | None = None  # transformer attention-probability dropout (default: the preset's / saved model's)
    augment_copies: int = 0
    """stage 2 also trains on this many translated copies of the training episodes (HARP's translation augmentation,
    one random shift of up to --augment-shift pixels per episode and copy, cached once like the original)"""
    augment_shift: int = 4                    # random translation in pixels of the training clips


TOKENIZER_LR, WARMUP = 1e-3, 50


def stage_config(args: HarpQualityConfig, minutes: float, lr: float) -> TrainConfig:
    """The Trainer settings of one stage: ``minutes`` of training steps (or ``max_steps``), cosine to lr / 10."""
    return TrainConfig(steps=args.max_steps, max_minutes=minutes, lr=lr, warmup_steps=WARMUP, batch_size=args.batch,
                       seed=args.seed, device=args.device, save_every=args.save_every, eval_every=args.eval_every,
                       eval_batches=4, log_every=25)


def main(argv: list[str] | None = None) -> None:
    args = build_config(HarpQualityConfig, sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = jsonl_logger(out / "log.jsonl")

    cfg = foresight.preset(HarpConfig, args.preset)
    if args.image_size:
        cfg = dataclasses.replace(cfg, image_size=args.image_size)
    c, f = cfg.context_frames, cfg.future_frames
    train_eps, test_eps = EpisodeDataset(args.data, split="train"), EpisodeDataset(args.data, split="test")
    train = ClipDataset(train_eps, context=c, future=f, window_step=1)
    test = ClipDataset(test_eps, context=c, future=f, window_step=1, task_names=train.task_names)
    log({"train_episodes": len(train_eps), "test_episodes": len(test_eps), "train_clips": len(train),
         "test_clips": len(test), "config": foresight.config.to_dict(cfg)})
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
    phases: dict[str, Any] = {}
    if args.eval_only:
        model = foresight.load(args.eval_only, map_location=select_device(args.device))
        steps1 = steps2 = None
    else:
        # ---- stage 1: tokenizer (Trainer in <out>/tokenizer; held-out frame losses in its metrics.jsonl)
        phases["tokenizer"] = untrained("--tokenizer-minutes 0: tokenizer kept")
        if args.tokenizer_minutes > 0:
            model, phases["tokenizer"] = run_phase(model, train, stage_config(args, args.tokenizer_minutes, TOKENIZER_LR),
                                                   run_dir=out / "tokenizer", stage="tokenizer", eval_dataset=test,
                                                   log=log)
        steps1 = phases["tokenizer"]["steps"]
        model.eval()
        model.save_pretrained(out / "tokenizer_model")  # lets a later run (--init) continue from here
        if args.init and steps1 > 0:  # the codes have changed: stage 2 starts from a fresh transformer
            fresh = Harp(cfg).to(model.device)
            fresh.tokenizer.load_state_dict(model.tokenizer.state_dict())
            model = fresh.eval()
        with torch.no_grad():
            rec = model.decode(model.encode(test_frames.to(model.device)))
        rec_psnr = float(psnr(rec.cpu(), test_frames).mean())
        log({"tokenizer_steps": steps1, "tokenizer_steps_total": int(model.tokenizer.step),
             "test_frames": len(test_frames), "reconstruction_psnr": rec_psnr})

        # ---- stage 2: transformer on the codes the Trainer caches of train clips (every cache_step-th start:
        # fewer frames to encode once), plus --augment-copies translated copies of the training episodes
        def stage2_clips() -> ClipDataset:
            sub = ClipDataset(train_eps, context=c, future=f, window_step=args.cache_step, task_names=train.task_names)
            return with_shifted_copies(sub, args.augment_copies, args.augment_shift, window_step=args.cache_step,
                                       seed=args.seed)

        phases["transformer"] = untrained("--transformer-minutes 0")
        model.set_stage("transformer")
        if args.transformer_minutes > 0:
            model, phases["transformer"] = run_phase(
                model, stage2_clips, stage_config(args, args.transformer_minutes, args.transformer_lr),
                run_dir=out / "transformer", stage="transformer", eval_dataset=test, log=log)
        steps2 = phases["transformer"]["steps"]
        model.eval()
        model.save_pretrained(out / "model")

    # ---- evaluation on held-out clips, spread over all test episodes
    idx = np.linspace(0, len(test) - 1, min(args.eval_clips, len(test))).round().astype(int)
    batch = test.get_batch(idx, augment=False)
    frames, actions = batch["frames"], batch["actions"]
    context, truth, fut_actions = frames[:, :c], frames[:, c:], actions[:, c - 1:]
    copy_last = context[:, -1:].expand_as(truth)
    model.eval()
    dev = model.device  # where the Trainer left it (CUDA when present); metrics are computed on the CPU
    if args.eval_only:
        with torch.no_grad():
            rec_psnr = float(psnr(model.decode(model.encode(test_frames.to(dev))).cpu(), test_frames).mean())
    results = {"init": args.init, "tokenizer_steps": steps1,
               "tokenizer_steps_total": int(model.tokenizer.step), "transformer_steps": steps2,
               "reconstruction_psnr": rec_psnr,
               "eval_clips": len(idx), "budget_minutes": [args.tokenizer_minutes, args.transformer_minutes],
               "threads": args.threads, "trainer": "foresight.train.Trainer, TrainConfig.max_minutes per stage",
               "phases": phases}
    with torch.no_grad():  # teacher-forced cross-entropy on the held-out clips: over-fitting shows here first
        codes = model.encode(frames.to(dev))  # [B, C+F, h, w]
        logits = model.transformer(codes, context.to(dev) if model.config.context_resnet else None,
                                   fut_actions.to(dev))  # [B, F*N, K]
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
        recon_truth = model.decode(model.encode(truth.to(dev))).cpu()
    results["tokenizer_ceiling"] = {"psnr": float(psnr(recon_truth, truth).mean()),
                                    "ssim": float(ssim(recon_truth, truth).mean())}
    preds = {}
    for name, top_k in (("harp_topk10", 10), ("harp_greedy", 1)):
        model.config.top_k = top_k
        t0 = time.perf_counter()
        pred = model.predict(context, fut_actions, seed=args.seed)[:, 0].cpu()  # [B, F, 3, H, W]
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
