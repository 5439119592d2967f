"""MT50 imitation on top of a video-prediction model (HARP Sec. 5.3, App. A.4, Table 3), end to end.

    python experiments/mt50_bc.py                        # CPU default: a task subset, ~30 min on 2 cores
    python experiments/mt50_bc.py --preset paper         # the paper's protocol (CUDA GPU; days of compute)
    python experiments/mt50_bc.py world_model=runs/harp/paper/model seeds=[0,1,2]

Stages, each skipped when its output exists, so a killed run continues where it stopped:

1. collect scripted-expert demos (``envs.demos``) for the tasks into ``data_root`` (resumable per episode);
2. pretrain HARP action-free on all tasks' clips (1 context frame + F future frames): tokenizer, then
   transformer (``foresight.train.Trainer``, resumable per step), unless ``world_model`` points to a checkpoint;
3. fine-tune behaviour cloning for each method and seed: HARP (the pretrained transformer + a 2-layer policy
   head + an inverse-dynamics head), VQ-Transformer (same architecture, transformer from scratch), CNN-LSTM and
   CNN-Transformer; translation augmentation m=4;
4. evaluate each policy on held-out task variations (``envs.mt50_eval``: success at any step within
   ``eval_max_steps``), in worker processes;
5. write ``results.md``, ``results.csv``, ``results.json`` and ``results.png`` (success with 95 % Wilson intervals,
   mean +- std over seeds when there are several, per task and per difficulty group, next to the paper's
   Table 3), per-episode ``eval/<method>_seed<k>.json`` and rollout GIFs under ``videos/``.

What the CPU default runs is printed at the start and written at the top of ``results.md``; it is a
smaller protocol than the paper's (fewer tasks, demos, steps, trials), so its numbers are not Table 3's.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import foresight  # noqa: E402
from foresight.checkpoint import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from foresight.config import build_config, dump_yaml, merge, preset  # noqa: E402
from foresight.train import TrainConfig, Trainer  # noqa: E402

from experiments.common import UsageError, cli_main  # noqa: E402

# HARP Table 3 (MT50, all 50 tasks, 10 trials per task, mean +- std over 5 runs).
PAPER_TABLE3 = {"vq_transformer": (0.00, 0.00), "cnn_lstm": (0.41, 0.057), "cnn_transformer": (0.50, 0.055),
                "harp": (0.58, 0.038)}
METHOD_NAMES = {"harp": "HARP (fine-tuned)", "vq_transformer": "VQ-Transformer", "cnn_lstm": "CNN-LSTM",
                "cnn_transformer": "CNN-Transformer"}

CPU_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "door-open-v3", "window-open-v3")
# envs.metaworld.MT10_TASKS (written out so that --help does not import MuJoCo; a test keeps them equal)
MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")


@dataclass
class MT50BCConfig:
    """Everything the pipeline does; presets ``cpu`` (default), ``paper`` and ``tiny`` (tests)."""

    run_dir: str = ""                       # default: runs/mt50_bc/<preset>
    preset_name: str = "cpu"                # filled in from --preset; recorded in the results
    # --- data
    tasks: tuple[str, ...] = CPU_TASKS       # empty: all 50 MT50 tasks
    demos_per_task: int = 20                # variations 0..n-1; v % 10 == 9 are held out (test split)
    data_root: str = "data/metaworld_64"
    image_size: int = 64
    workers: int = 2                        # processes for demo collection and evaluation
    # --- world-model pretraining (action-free, 1 context frame + future_frames)
    world_model: str = ""                   # a pretrained HARP checkpoint; empty: pretrain one here
    harp_preset: str = "quick"
    future_frames: int = 3                  # HARP Meta-World: 11
    harp_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"layers": 4}
    tokenizer: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=400, batch_size=8, lr=1e-3, warmup_steps=40, eval_every=200, save_every=100))
    transformer: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=400, batch_size=16, lr=1e-3, warmup_steps=40, eval_every=200, save_every=100))
    # --- behaviour cloning
    methods: tuple[str, ...] = ("harp", "vq_transformer", "cnn_lstm", "cnn_transformer")
    baseline_preset: str = "quick"          # size of the CNN baselines (paper: ResNet-50 trunks)
    bc: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=250, batch_size=16, lr=3e-4, warmup_steps=25, eval_every=125, save_every=50))
    augment_shift: int = 4                  # HARP: m = 4
    inverse_weight: float = 1.0             # weight of the inverse-dynamics auxiliary loss
    seeds: tuple[int, ...] = (0,)
    # --- evaluation
    eval_trials: int = 20                   # held-out variations per task (paper: 10)
    eval_max_steps: int = 200               # success at any step within this many steps (paper: 500)
    eval_envs_per_worker: int = 4           # envs each evaluation worker steps together (one batched policy call)
    record_videos: int = 1                  # rollouts per task kept as GIFs (seed 0)
    threads: int = 0                        # torch threads for training (0: all cores; 1 if another job shares them)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "paper": {
            "tasks": (), "demos_per_task": 50, "harp_preset": "paper", "future_frames": 11,
            "tokenizer": {"steps": 50000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 1000, "save_every": 2500,
                          "eval_every": 2500},
            "transformer": {"steps": 50000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 1000,
                            "save_every": 2500, "eval_every": 2500},
            "baseline_preset": "paper",
            "bc": {"steps": 20000, "batch_size": 20, "lr": 1e-4, "warmup_steps": 500, "save_every": 2000,
                   "eval_every": 2000},
            "seeds": (0, 1, 2, 3, 4), "eval_trials": 10, "eval_max_steps": 500, "eval_envs_per_worker": 10,
        },
        # between the two, for a lent CUDA GPU (not yet timed on one): MT10, 3 seeds, the paper's horizon
        "gpu": {
            "tasks": MT10, "demos_per_task": 50, "harp_preset": "quick", "future_frames": 11,
            "tokenizer": {"steps": 5000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 250, "save_every": 1000,
                          "eval_every": 1000},
            "transformer": {"steps": 5000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 250, "save_every": 1000,
                            "eval_every": 1000},
            "bc": {"steps": 2000, "batch_size": 20, "lr": 1e-4, "warmup_steps": 100, "save_every": 500,
                   "eval_every": 500},
            "seeds": (0, 1, 2), "eval_trials": 10, "eval_max_steps": 500, "eval_envs_per_worker": 10,
        },
        "tiny": {
            "tasks": ("reach-v3",), "demos_per_task": 2, "image_size": 16, "workers": 0, "harp_preset": "tiny",
            "future_frames": 3,
            "tokenizer": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "save_every": 0,
                          "log_every": 2},
            "transformer": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "save_every": 0,
                            "log_every": 2},
            "baseline_preset": "tiny",
            "bc": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "save_every": 0, "log_every": 2},
            "eval_trials": 1, "eval_max_steps": 8,
        },
    }


class PolicyFactory:
    """Picklable ``factory(task) -> policy`` that loads a saved policy inside an evaluation worker."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, task_name: str):
        from agents.policies import load_policy

        return load_policy(self.path)


# ---------------------------------------------------------------------------------------------------- stages


def _tasks(cfg: MT50BCConfig) -> list[str]:
    from envs.metaworld import MT50_TASKS

    unknown = [t for t in cfg.tasks if t not in MT50_TASKS]
    if unknown:
        raise UsageError(f"tasks: unknown task(s) {unknown}; expected MT50 v3 names such as {MT50_TASKS[0]!r}")
    return list(cfg.tasks) if cfg.tasks else list(MT50_TASKS)


def collect(cfg: MT50BCConfig) -> dict[str, Any]:
    from envs.demos import collect_demos, format_summary

    summary = collect_demos(cfg.data_root, tasks=_tasks(cfg), demos_per_task=cfg.demos_per_task,
                            image_size=cfg.image_size, workers=cfg.workers)
    print(format_summary(summary))
    return summary.to_dict()


def _episodes(cfg: MT50BCConfig, split: str):
    """The episodes of ``split`` among variations 0..demos_per_task-1 of each task, in (task, variation) order.

    ``data_root`` may hold a fuller collection (``collect_metaworld.py`` writes to the same default folder); the
    protocol reported in results.md is ``demos_per_task`` demos per task, so only those are used. Sorting makes
    the clip order independent of the order in which collection workers finished.
    """
    from foresight.data import EpisodeDataset

    tasks = _tasks(cfg)
    episodes = EpisodeDataset(cfg.data_root, split=split, tasks=tasks)
    rank = {t: i for i, t in enumerate(tasks)}
    episodes.records = sorted((r for r in episodes.records if r.variation < cfg.demos_per_task),
                              key=lambda r: (rank[r.task], r.variation))
    return episodes


def _clips(cfg: MT50BCConfig, split: str, *, length: int, augment: int):
    from foresight.data import ClipDataset

    episodes = _episodes(cfg, split)
    if len(episodes) == 0:
        return None
    from envs.metaworld import MT50_TASKS

    return ClipDataset(episodes, context=1, future=length - 1, augment_shift=augment, with_states=False,
                       task_names=MT50_TASKS)


def pretrain(cfg: MT50BCConfig, run_dir: Path) -> foresight.WorldModel:
    """HARP pretrained action-free on clips of all tasks (App. A.4); returns the trained model."""
    if cfg.world_model:
        model = foresight.load(cfg.world_model)
        print(f"using pretrained world model {cfg.world_model} ({model.type})")
        return model
    export = run_dir / "pretrain" / "model"
    if (export / "config.json").is_file():
        print(f"pretrained world model found at {export}")
        return foresight.load(export)
    from foresight.models.harp import Harp, HarpConfig

    overrides = {"image_size": cfg.image_size, "action_dim": 0, "context_frames": 1,
                 "future_frames": cfg.future_frames, **cfg.harp_overrides}
    model = Harp(merge(preset(HarpConfig, cfg.harp_preset), overrides))
    length = 1 + cfg.future_frames
    train_set = _clips(cfg, "train", length=length, augment=cfg.augment_shift)
    eval_set = _clips(cfg, "test", length=length, augment=0)
    print(f"pretraining HARP ({model.num_parameters() / 1e6:.2f}M parameters) on {len(train_set)} clips")
    for stage, tcfg in (("tokenizer", cfg.tokenizer), ("transformer", cfg.transformer)):
        stage_dir = run_dir / "pretrain" / stage
        if (stage_dir / "done").exists():
            model = foresight.load(stage_dir)
            continue
        trainer = Trainer(model, train_set, config=tcfg, run_dir=stage_dir, stage=stage, eval_dataset=eval_set)
        trainer.fit()
        (stage_dir / "done").touch()
        model = foresight.load(stage_dir)
    model.save_pretrained(export)
    return model


def finetune(cfg: MT50BCConfig, run_dir: Path, method: str, seed: int, world_model) -> Path:
    """Behaviour cloning for one method and seed; returns the saved policy directory."""
    from agents.policies import make_bc_policy

    out = run_dir / "bc" / f"{method}_seed{seed}"
    export = out / "policy"
    if (export / "config.json").is_file():
        return export
    torch.manual_seed(seed)
    backbone = world_model if method in ("harp", "vq_transformer") else None
    history = 1 + cfg.future_frames
    policy = make_bc_policy(method, backbone_model=backbone, preset=cfg.baseline_preset, action_dim=4,
                            image_size=cfg.image_size, history=history, inverse_weight=cfg.inverse_weight, seed=seed)
    train_set = _clips(cfg, "train", length=history, augment=cfg.augment_shift)
    eval_set = _clips(cfg, "test", length=history, augment=0)
    tcfg = merge(cfg.bc, {"seed": seed})
    n = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    print(f"BC {METHOD_NAMES[method]} seed {seed}: {n / 1e6:.2f}M trainable parameters, {len(train_set)} clips")
    trainer = Trainer(policy, train_set, config=tcfg, run_dir=out, stage="policy", eval_dataset=eval_set)
    if trainer.step < tcfg.steps:
        trainer.fit()
    policy.save_pretrained(export)
    return export


def evaluate(cfg: MT50BCConfig, run_dir: Path, method: str, seed: int, policy_dir: Path) -> dict[str, Any]:
    from envs.mt50_eval import evaluate_policy, summarize
    from foresight.viz import save_gif

    path = run_dir / "eval" / f"{method}_seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    results = evaluate_policy(PolicyFactory(str(policy_dir)), tasks=_tasks(cfg), trials=cfg.eval_trials,
                              max_steps=cfg.eval_max_steps, image_size=cfg.image_size, workers=cfg.workers,
                              envs_per_worker=cfg.eval_envs_per_worker,
                              record_videos=cfg.record_videos if seed == cfg.seeds[0] else 0,
                              desc=f"eval {method} seed {seed}")
    summary = summarize(results)
    summary.update(method=method, seed=seed, seconds=time.perf_counter() - t0, policy=str(policy_dir))
    for r in results:
        if r.frames is not None:
            tag = "success" if r.success else "fail"
            save_gif(run_dir / "videos" / method / f"{r.task}_trial{r.trial}_{tag}.gif", r.frames[::2], fps=15)
    atomic_write_json(path, summary)
    print(f"{METHOD_NAMES[method]} seed {seed}: mean success {summary['mean_success']:.3f}")
    return summary


# ---------------------------------------------------------------------------------------------------- report


def _fmt(summary: dict[str, Any]) -> str:
    """``0.32 [0.17, 0.51] (8/25)`` (+ ``; seeds 0.31 +- 0.04``): the pooled rate, its 95 % Wilson interval, counts."""
    lo, hi = summary["ci95"]
    text = f"{summary['rate']:.2f} [{lo:.2f}, {hi:.2f}] ({summary['successes']}/{summary['trials']})"
    if "seed_std" in summary:
        text += f"; seeds {summary['seed_mean']:.2f} +- {summary['seed_std']:.2f}"
    return text


def summarize_method(runs: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """One method's evaluations (one per seed) -> pooled success with intervals, overall, per task, per group.

    ``overall`` pools every trial of every task and seed (tasks weigh the same: each has the same trials), with
    the per-seed mean success's mean +- std when there are several seeds; ``per_task`` and ``per_group`` (Meta-World
    difficulty groups present among ``tasks``) pool that task's / group's trials over seeds."""
    from envs.metaworld import MT50_DIFFICULTY
    from foresight.metrics.intervals import success_summary

    def pooled(names: Sequence[str], seed_rates: list[float] | None = None) -> dict[str, Any]:
        k = sum(r["per_task"][t]["successes"] for r in runs for t in names)
        n = sum(r["per_task"][t]["trials"] for r in runs for t in names)
        return success_summary(k, n, seed_rates)

    groups = {g: [t for t in tasks if t in members] for g, members in MT50_DIFFICULTY.items()}
    return {"seeds": len(runs),
            "overall": pooled(tasks, [float(r["mean_success"]) for r in runs]),
            "per_task": {t: pooled([t], [float(r["per_task"][t]["success_rate"]) for r in runs]) for t in tasks},
            "per_group": {g: pooled(ts, [float(np.mean([r["per_task"][t]["success_rate"] for t in ts]))
                                         for r in runs]) for g, ts in groups.items() if ts}}


def write_report(cfg: MT50BCConfig, run_dir: Path, evals: dict[str, list[dict[str, Any]]],
                 timings: dict[str, float]) -> str:
    """results.md (tables with 95 % Wilson intervals), results.csv, results.json and results.png (whiskers)."""
    tasks = _tasks(cfg)
    rows = [{"method": method, **summarize_method(runs, tasks)} for method, runs in evals.items()]
    protocol = (f"{len(tasks)} task(s) ({'all MT50' if len(tasks) == 50 else ', '.join(tasks)}), "
                f"{cfg.demos_per_task} demos per task (10% held out), {cfg.eval_trials} held-out trial(s) per task, "
                f"success within {cfg.eval_max_steps} steps, {len(cfg.seeds)} seed(s); HARP pretrained "
                f"{'from ' + cfg.world_model if cfg.world_model else f'here ({cfg.harp_preset} preset, 1+{cfg.future_frames} frames, {cfg.tokenizer.steps}+{cfg.transformer.steps} steps)'}; "
                f"BC {cfg.bc.steps} steps x batch {cfg.bc.batch_size}, augmentation m={cfg.augment_shift}.")
    lines = [f"# MT50 imitation results (preset `{cfg.preset_name}`)", "", f"Protocol: {protocol}", "",
             "Success rate pooled over all trials [95 % Wilson interval] (successes / trials); with several seeds "
             "also the mean +- std of the per-seed success.", "",
             "| method | success | paper Table 3 (MT50, 50 tasks, mean +- std over 5 seeds) |", "|---|---|---|"]
    for row in rows:
        paper = PAPER_TABLE3.get(row["method"])
        lines.append(f"| {METHOD_NAMES[row['method']]} | {_fmt(row['overall'])} | {paper[0]:.2f} +- {paper[1]:.3f} |")
    if len(rows) > 1:
        best = max(rows, key=lambda r: r["overall"]["rate"])
        others = [r for r in rows if r is not best]
        apart = [r for r in others if r["overall"]["ci95"][1] < best["overall"]["ci95"][0]]
        lines += ["", f"{METHOD_NAMES[best['method']]} has the highest rate; its interval lies above that of "
                  + (", ".join(METHOD_NAMES[r["method"]] for r in apart) if apart else "no other method")
                  + (f" and overlaps {', '.join(METHOD_NAMES[r['method']] for r in others if r not in apart)}"
                     if len(apart) < len(others) else "") + "."]
    header = "| {} | " + " | ".join(METHOD_NAMES[r["method"]] for r in rows) + " |"
    rule = "|---|" + "---|" * len(rows)
    if len(rows[0]["per_group"]) > 1:
        lines += ["", "Per Meta-World difficulty group:", "", header.format("group"), rule]
        for g in rows[0]["per_group"]:
            lines.append(f"| {g} | " + " | ".join(_fmt(r["per_group"][g]) for r in rows) + " |")
    lines += ["", "Per task:", "", header.format("task"), rule]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_fmt(r["per_task"][t]) for r in rows) + " |")
    lines += ["", "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    text = "\n".join(lines)
    atomic_write_text(run_dir / "results.md", text)
    atomic_write_json(run_dir / "results.json", {"protocol": protocol, "methods": rows, "timings": timings})

    with atomic_path(run_dir / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "success", "ci95_low", "ci95_high", "successes", "trials", "seeds", "seed_mean",
                    "seed_std", "paper_mean", "paper_std", *tasks])
        for r in rows:
            o = r["overall"]
            paper = PAPER_TABLE3.get(r["method"], (float("nan"), float("nan")))
            w.writerow([r["method"], f"{o['rate']:.4f}", f"{o['ci95'][0]:.4f}", f"{o['ci95'][1]:.4f}", o["successes"],
                        o["trials"], r["seeds"], f"{o.get('seed_mean', o['rate']):.4f}", f"{o.get('seed_std', 0.0):.4f}",
                        paper[0], paper[1], *[f"{r['per_task'][t]['rate']:.4f}" for t in tasks]])
    _bar_chart(run_dir / "results.png", rows, cfg)
    return text


def _bar_chart(path: Path, rows: list[dict[str, Any]], cfg: MT50BCConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [METHOD_NAMES[r["method"]] for r in rows]
    x = np.arange(len(rows))
    rate = np.array([r["overall"]["rate"] for r in rows])
    lo = np.array([r["overall"]["ci95"][0] for r in rows])
    hi = np.array([r["overall"]["ci95"][1] for r in rows])
    trials = rows[0]["overall"]["trials"] if rows else 0
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.bar(x - 0.2, rate, 0.4, yerr=np.stack([rate - lo, hi - rate]), capsize=3,
           label=f"this run ({len(_tasks(cfg))} tasks, {trials} trials per method; 95 % Wilson interval)")
    ax.bar(x + 0.2, [PAPER_TABLE3[r["method"]][0] for r in rows], 0.4,
           yerr=[PAPER_TABLE3[r["method"]][1] for r in rows], capsize=3, label="HARP paper, Table 3 (MT50; std)")
    ax.set_xticks(x, names, rotation=10)
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.25)  # headroom above 1 for the legend, so it never covers a bar
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(f"MT50 imitation, preset '{cfg.preset_name}'")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main


def run(cfg: MT50BCConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir or f"runs/mt50_bc/{cfg.preset_name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    print(f"MT50 BC pipeline, preset {cfg.preset_name!r}, run dir {run_dir}")
    print(dump_yaml(cfg))
    timings: dict[str, float] = {}
    timings_path = run_dir / "timings.json"
    if timings_path.is_file():
        timings = json.loads(timings_path.read_text())

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        atomic_write_json(timings_path, timings)
        return out

    timed("collect", collect, cfg)
    world_model = timed("pretrain", pretrain, cfg, run_dir)
    evals: dict[str, list[dict[str, Any]]] = {}
    for method in cfg.methods:
        for seed in cfg.seeds:
            policy_dir = timed(f"bc_{method}", finetune, cfg, run_dir, method, seed, world_model)
            evals.setdefault(method, []).append(timed(f"eval_{method}", evaluate, cfg, run_dir, method, seed, policy_dir))
    text = write_report(cfg, run_dir, evals, timings)
    print(text)
    print(f"results: {run_dir / 'results.md'}, {run_dir / 'results.csv'}, {run_dir / 'results.png'}")
    return {m: [r["mean_success"] for r in runs] for m, runs in evals.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = build_config(MT50BCConfig, argv, default_preset="cpu")
    name = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--preset"), None)
    name = name or next((a.split("=", 1)[1] for a in argv if a.startswith(("--preset=", "preset="))), "cpu")
    cfg = merge(cfg, {"preset_name": name})
    _tasks(cfg)  # unknown task names fail here, before anything is written
    # OpenMP threads that compete with another busy process for the same cores spin and slow small convs ~10x.
    torch.set_num_threads(cfg.threads or max(1, os.cpu_count() or 1))
    return run(cfg)


if __name__ == "__main__":
    cli_main(main, MT50BCConfig, __doc__)
