"""Pieces the experiment scripts share: where data lives and how clip datasets are built from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset


@dataclass
class DataConfig:
    """Which clips a world model trains and is evaluated on."""

    root: str = "data/metaworld_64"   # episode store (experiments/collect_metaworld.py), or "synthetic"
    tasks: tuple[str, ...] = ()       # task names to keep (empty: all)
    stride: int = 1                   # keep every stride-th frame
    window_step: int = 1              # raw frames between consecutive clip starts of an episode
    augment_shift: int = 0            # random translation in pixels (HARP: 4)
    eval_split: str = "test"          # split used for periodic evaluation ("" = none)
    synthetic_clips: int = 256        # size of the synthetic dataset when root == "synthetic"


def build_clip_datasets(config: DataConfig, *, context: int, future: int, image_size: int,
                        action_dim: int) -> tuple[Dataset, Dataset | None]:
    """(train, eval) clip datasets in the WorldModel batch convention."""
    if config.root == "synthetic":
        from foresight.testing import SyntheticClips

        kw = dict(context_frames=context, future_frames=future, image_size=image_size, action_dim=max(action_dim, 2),
                  square=max(2, image_size // 8))
        return (SyntheticClips(config.synthetic_clips, seed=0, augment_shift=config.augment_shift, **kw),
                SyntheticClips(max(16, config.synthetic_clips // 8), seed=1, **kw))

    from foresight.data import ClipDataset, EpisodeDataset
    from foresight.data.episodes import MANIFEST

    root = Path(config.root)
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no episode dataset at {root}: collect one with `python experiments/collect_metaworld.py "
            f"--out {root}` or pass data.root=synthetic for a smoke run")
    tasks = list(config.tasks) or None

    def clips(split: str, augment: int) -> Any:
        episodes = EpisodeDataset(root, split=split, tasks=tasks)
        if len(episodes) == 0:
            return None
        ds = ClipDataset(episodes, context=context, future=future, stride=config.stride,
                         window_step=config.window_step, augment_shift=augment, with_states=False)
        if ds.image_size != image_size:
            raise ValueError(f"dataset {root} has {ds.image_size}x{ds.image_size} frames, the model expects "
                             f"{image_size}x{image_size}")
        if action_dim and ds.action_dim != action_dim:
            raise ValueError(f"dataset {root} has {ds.action_dim}-D actions (stride {config.stride}), the model "
                             f"expects {action_dim}-D")
        return ds

    train = clips("train", config.augment_shift)
    if train is None:
        raise ValueError(f"dataset {root} has no training episodes{f' for tasks {tasks}' if tasks else ''}")
    return train, (clips(config.eval_split, 0) if config.eval_split else None)
