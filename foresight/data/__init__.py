"""Dataset formats: the on-disk episode store and the clip windows models train on."""

from foresight.data.clips import ClipDataset, ClipLoader, shift_augment
from foresight.data.episodes import (
    CorruptEpisodeError,
    EpisodeDataset,
    EpisodeRecord,
    EpisodeWriter,
    load_episode,
    read_manifest,
    read_meta,
    save_episode,
)

__all__ = [
    "ClipDataset",
    "ClipLoader",
    "shift_augment",
    "CorruptEpisodeError",
    "EpisodeDataset",
    "EpisodeRecord",
    "EpisodeWriter",
    "load_episode",
    "read_manifest",
    "read_meta",
    "save_episode",
]
