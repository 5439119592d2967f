"""Train any registered world model, stage by stage, on Meta-World (or RoboNet, or synthetic) clips.

    python experiments/train_world_model.py --model harp --preset quick data.root=data/metaworld_64
    python experiments/train_world_model.py --model harp --stage transformer --init runs/harp/quick/tokenizer
    python experiments/train_world_model.py --model ghvae --preset tiny data.root=synthetic train.steps=50
    torchrun --nproc_per_node=4 experiments/train_world_model.py --model harp --preset paper ...

Arguments: ``--model TYPE``, ``--preset tiny|quick|paper`` (applies to the model and the training loop),
``--stage NAME`` (default: every stage in order), ``--init DIR`` (start from a saved model), ``--config FILE``
(YAML with ``model:``, ``train:``, ``data:`` sections) and overrides ``model.x=..``, ``train.x=..``,
``data.x=..``, ``run_dir=..``.

Each stage trains in ``<run_dir>/<stage>/`` (metrics.jsonl, config.yaml, checkpoints/, videos/) and resumes
there when re-run; the next stage starts from the previous stage's final weights; the final model is exported
to ``<run_dir>/model/`` (load it with ``foresight.load``). ``--stage NAME`` for a later stage starts from the
previous stage's final model in the same run directory (or from ``--init DIR``); a stage that trains on frozen
parts of an earlier one (HARP's transformer on the tokenizer's codes) refuses to start from random weights.
``train.seed`` seeds the model's initial weights as well as the data order.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import foresight  # noqa: E402
from foresight import checkpoint as ckpt  # noqa: E402
from foresight.config import dump_yaml, load_yaml, merge, parse_overrides, preset, to_dict  # noqa: E402
from foresight.registry import get_model_class  # noqa: E402
from foresight.train import TrainConfig, Trainer, seed_everything  # noqa: E402

from experiments.common import (  # noqa: E402
    DataConfig, UsageError, build_clip_datasets, cli_main, config_fields, config_help)


@dataclass
class RunConfig:
    """Where and what to train (model and training settings live in their own configs)."""

    model: str = "conv"                 # world-model type: harp, ghvae, videogpt, video_vqvae, hier_vrnn, conv, copy_last
    preset: str = "quick"               # tiny | quick | paper (model and training loop)
    stage: str | None = None            # train only this stage (default: all stages in order)
    init: str | None = None             # start from this saved model dir (default: previous stage in run_dir)
    run_dir: str | None = None          # default: runs/<model>/<preset>
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def parse_args(argv: list[str]) -> tuple[RunConfig, Any]:
    overrides = parse_overrides(argv)
    file_values: dict[str, Any] = load_yaml(overrides.pop("config")) if "config" in overrides else {}
    model_type = overrides.pop("model", None) or file_values.get("model", "conv")
    if isinstance(model_type, dict):  # a YAML "model:" section with its own "type"
        model_type = model_type.get("type", "conv")
    preset_name = overrides.pop("preset", None) or file_values.get("preset", "quick")
    model_cls = model_class(model_type)

    model_values = {k[len("model."):]: v for k, v in overrides.items() if k.startswith("model.")}
    run_values = {k: v for k, v in overrides.items() if not k.startswith("model.")}
    file_model = file_values.get("model") if isinstance(file_values.get("model"), dict) else {}
    file_model = {k: v for k, v in file_model.items() if k != "type"}

    model_config = merge(merge(preset(model_cls.config_class, preset_name), file_model), model_values)
    run = RunConfig(model=model_type, preset=preset_name, train=preset(TrainConfig, preset_name))
    file_run = {k: v for k, v in file_values.items() if k not in ("model", "preset")}
    run = merge(merge(run, _flatten(file_run)), run_values)
    if run.run_dir is None:
        run = merge(run, {"run_dir": f"runs/{model_type}/{preset_name}"})
    if run.train.steps < 1:
        raise UsageError(f"train.steps={run.train.steps}: a stage trains for at least 1 step")
    return run, model_config


def model_class(name: Any) -> Any:
    """The registered world-model class ``name``; an unknown name is a usage error that lists the known ones."""
    try:
        return get_model_class(str(name))
    except KeyError as e:
        raise UsageError(f"--model {name}: {e.args[0]}") from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def model_overrides(argv: list[str]) -> dict[str, Any]:
    """The ``model.x=..`` values given on the command line (applied on top of an ``--init`` model's config)."""
    return {k[len("model."):]: v for k, v in parse_overrides(argv).items() if k.startswith("model.")}


def with_config_changes(model: foresight.WorldModel, changes: dict[str, Any], source: str) -> foresight.WorldModel:
    """``model`` rebuilt with ``changes`` to its config and its weights kept (e.g. a loss weight for a
    fine-tune). Weights a new field adds start as the model class initialises them; a change that alters the
    shape of an existing weight is refused."""
    if not changes:
        return model
    config = merge(model.config, changes)
    new = type(model)(config).to(model.device)
    try:
        new.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as err:
        raise UsageError(f"--init {source}: {', '.join('model.' + k for k in changes)} change the shape of its "
                         f"weights; only settings that keep them can be changed on a saved model ({err})") from None
    new.stats = dict(getattr(model, "stats", {}))
    return new.set_stage(model.stage)


def build_model(run: RunConfig, model_config: Any, overrides: dict[str, Any] | None = None) -> foresight.WorldModel:
    """The model the first trained stage starts from: ``--init`` (with ``overrides``, the command line's
    ``model.x=..``, applied to its config), else the previous stage's final model in the run directory (when
    ``--stage`` names a later stage), else a fresh model seeded with ``train.seed``."""
    model_cls = model_class(run.model)
    # Seed before building: the initial weights are part of what `train.seed` must fix (the Trainer seeds again
    # later, for the data order, which is too late for them).
    seed_everything(run.train.seed)
    if run.init:
        model = foresight.load(run.init)
        if type(model) is not model_cls:
            raise UsageError(f"--init {run.init} holds a {model.type!r} model, not {run.model!r}")
        return with_config_changes(model, overrides or {}, run.init)
    model = model_cls(model_config)
    if run.stage is None or run.stage not in model.stages or run.stage == model.stages[0]:
        return model
    previous = model.stages[model.stages.index(run.stage) - 1]
    found = previous_stage_result(Path(run.run_dir), previous)
    if found is not None:
        print(f"stage {run.stage}: starting from stage {previous}'s final model {found}")
        return foresight.load(found)
    model.set_stage(run.stage)
    if all(p.requires_grad for p in model.parameters()):
        return model  # the stage trains every weight (GHVAE's end-to-end finetune): scratch is a valid start
    raise UsageError(
        f"stage {run.stage!r} of {run.model} trains on top of stage {previous!r}, but {Path(run.run_dir) / previous} "
        f"holds no finished {previous!r} stage: train it first with the same run_dir (--stage {previous}), or "
        f"start from a saved model with --init <dir>")


def previous_stage_result(run_dir: Path, stage: str) -> Path | None:
    """``<run_dir>/<stage>/checkpoints/last`` when that stage finished (its configured steps, or its
    ``train.max_minutes`` budget, reached)."""
    last = run_dir / stage / "checkpoints" / ckpt.LAST_LINK
    if not (last / "config.json").is_file():
        return None
    state = last / ckpt.TRAINING_STATE_DIR / "trainer.json"
    if state.is_file():
        info = json.loads(state.read_text())
        steps = info.get("train_config", {}).get("steps")
        if not info.get("finished", False) and steps is not None and int(info.get("step", 0)) < int(steps):
            raise UsageError(
                f"stage {stage!r} in {run_dir / stage} stopped at step {info.get('step')} of {steps}: finish it "
                f"first (rerun with --stage {stage} and the same run_dir), or pass --init <dir>")
    return last


def train(run: RunConfig, model_config: Any, overrides: dict[str, Any] | None = None) -> Path:
    """Train the stages of ``run`` and export the final model; returns the export directory."""
    run_dir = Path(run.run_dir)
    model = build_model(run, model_config, overrides)
    model_config = model.config
    stages = [run.stage] if run.stage else list(model.stages)
    for s in stages:
        if s not in model.stages:
            raise UsageError(f"unknown stage {s!r} for {run.model}; stages: {list(model.stages)}")

    train_set, eval_set = build_clip_datasets(run.data, context=model.context_frames, future=model.future_frames,
                                              image_size=model.image_size, action_dim=model.action_dim)
    print(dump_yaml(run))
    print(f"model: {run.model} ({model.num_parameters() / 1e6:.2f}M parameters) {model_config}")
    print(f"data: {len(train_set)} train clips, {len(eval_set) if eval_set is not None else 0} eval clips")

    for i, stage in enumerate(stages):
        stage_dir = run_dir / stage
        if i > 0:
            # Each stage starts from the previous stage's final weights (frozen parts included).
            model = foresight.load(run_dir / stages[i - 1])
        trainer = Trainer(model, train_set, config=run.train, run_dir=stage_dir, stage=stage, eval_dataset=eval_set,
                          run_config={"run": to_dict(run), "model": to_dict(model_config)})
        if trainer.step >= run.train.steps:
            print(f"stage {stage}: already trained ({trainer.step} steps), skipping")
            continue
        trainer.fit()
    final = foresight.load(run_dir / stages[-1])
    export = final.save_pretrained(run_dir / "model")
    print(f"exported {run.model} to {export}")
    return export


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    run, model_config = parse_args(argv)
    return train(run, model_config, model_overrides(argv))


def help_text(argv: list[str]) -> str:
    """--help: the run's options, and the model's (``--model harp --help`` lists HARP's ``model.*`` keys)."""
    try:
        overrides = parse_overrides([a for a in argv if a not in ("-h", "--help")])
    except ValueError:
        overrides = {}
    model_type, preset_name = str(overrides.get("model") or "conv"), str(overrides.get("preset") or "quick")
    others = ", ".join(foresight.available_models())
    try:
        run = RunConfig(model=model_type, preset=preset_name, train=preset(TrainConfig, preset_name))
        model_config = preset(model_class(model_type).config_class, preset_name)
        sections = [(f"model.* options of --model {model_type} --preset {preset_name} (types: {others}):",
                     config_fields(model_config, "model."))]
    except ValueError as e:  # an unknown model or preset: still show the run's options
        run, sections = RunConfig(), [(f"model.* options: {e}", [])]
    return config_help(run, __doc__, prog="train_world_model.py", sections=sections)


if __name__ == "__main__":
    cli_main(main, RunConfig, __doc__, help_text=help_text)
