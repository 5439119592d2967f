"""Export an episode store (experiments/collect_metaworld.py) as a LeRobot v3.0 dataset folder (parquet + MP4).

    python experiments/export_lerobot.py --src data/metaworld_64 --out data/metaworld_64_lerobot
    python experiments/export_lerobot.py --src data/mw_interaction --out /tmp/mw_lr --lossless --overwrite
    foresight-export-lerobot --src data/metaworld_64 --out data/metaworld_64_lerobot --fps 10

The folder is written under a temporary name and renamed into place when complete. Read it back with
``data.format=lerobot data.root=OUT`` in experiments/train_world_model.py or `foresight.data.lerobot.lerobot_clips`;
the layout is described in foresight/data/lerobot.py and docs/lerobot.md.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

from experiments.common import UsageError, cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


@dataclass
class Args:
    src: str = ""  # episode store folder (meta.json + manifest.jsonl + episodes/); required
    out: str = ""  # LeRobot dataset folder to create; required
    fps: int = 10  # frames per second written to info.json and the video timestamps
    camera_key: str = "observation.images.image"  # feature key of the camera stream
    lossless: bool = False  # libx264rgb at crf 0: bit-exact pixels, ~4x larger videos
    crf: int = 18  # H.264 quality when not lossless (lower: better, larger)
    gop: int = 2  # keyframe interval in frames (LeRobot's encoder uses 2: cheap random access)
    robot_type: str = ""  # info.json robot_type ('' = null)
    overwrite: bool = False  # replace an existing --out folder


def main(argv: list[str] | None = None) -> Path:
    args = build_config(Args, sys.argv[1:] if argv is None else argv)
    for name in ("src", "out"):
        if not getattr(args, name):
            raise UsageError(f"--{name} is required (e.g. --src data/metaworld_64 --out data/metaworld_64_lerobot)")
    from foresight.data.episodes import MANIFEST, EpisodeDataset
    from foresight.data.lerobot import LeRobotEpisodes
    from foresight.data.lerobot_export import write_lerobot

    src = Path(args.src)
    if not (src / MANIFEST).is_file():
        raise UsageError(f"--src {src}: no episode store there (expected {src / MANIFEST}); collect one with "
                         f"experiments/collect_metaworld.py")
    if Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; pass --overwrite to replace it")
    episodes = EpisodeDataset(src)
    if len(episodes) == 0:
        raise UsageError(f"--src {src} holds no episodes")
    t0 = time.perf_counter()
    out = write_lerobot(episodes, args.out, fps=args.fps, camera_key=args.camera_key, lossless=args.lossless,
                        crf=args.crf, gop=args.gop, robot_type=args.robot_type or None, overwrite=args.overwrite)
    written = LeRobotEpisodes(out)
    print(f"wrote {len(written)} episodes ({written.num_frames} frames, {len(written.task_names)} tasks) to {out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return out


if __name__ == "__main__":
    cli_main(main, Args, __doc__)
