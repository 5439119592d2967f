r"""Index a folder of RoboNet HDF5 files and convert it into the library's episode store.

After conversion every world model trains on RoboNet exactly as on Meta-World (`foresight.data.ClipDataset`
over `foresight.data.EpisodeDataset`, 2 context + 10 future frames).

    # the real data (folder of *.hdf5) with the standard 256-file test list
    python experiments/convert_robonet.py --robonet-dir ~/robonet/hdf5 --out data/robonet64 \
        --test-list ~/robonet/test_256.txt --image-size 64 --target-adim 4

    # only some robots / the index only
    python experiments/convert_robonet.py --robonet-dir ~/robonet/hdf5 --robot sawyer widowx --index-only

    # no RoboNet here: write synthetic files in the real layout first (smoke test of the whole path)
    python experiments/convert_robonet.py --synthetic 32 --robonet-dir data/robonet_synthetic --out data/robonet_syn64
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

from experiments.common import cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402
from foresight.data import robonet as rn  # noqa: E402


@dataclass
class Args:
    robonet_dir: str = "data/robonet"
    """folder of RoboNet *.hdf5 files (not recursive)"""
    out: str = "data/robonet_episodes"
    """episode dataset to write (resumable: files already converted are skipped)"""
    test_list: str | None = None
    """file-name list of the test split (e.g. the common 256-file list); listed files get split='test'"""
    image_size: int = 64
    """H = W of the stored frames (64 standard, 256 supported)"""
    camera: int = 0
    """camera stream to convert"""
    target_adim: Literal[4, 5] = 4
    """harmonised action width: 4 (x, y, z, theta; 5-D robots cut) or 5 (autograsp gripper imputed)"""
    robot: list[str] = field(default_factory=list)
    """keep only these robots (--robot sawyer widowx, robot=sawyer,widowx or the flag repeated); empty = all"""
    min_steps: int = 12
    """drop trajectories shorter than this (the standard clip needs 12)"""
    workers: int = 4
    """threads for reading file headers while indexing"""
    verify_hash: bool = False
    """re-hash every file while indexing (catches in-place edits that keep size and mtime)"""
    index_only: bool = False
    """build/refresh the metadata index, print its summary, convert nothing"""
    synthetic: int = 0
    """write this many synthetic RoboNet-layout files into robonet_dir first (0 = off)"""


def join_repeated(argv: list[str], key: str) -> list[str]:
    """``--robot a --robot b c`` -> ``--robot=a,b,c``: the values of a repeated list option, joined (`build_config`
    would keep only the last occurrence)."""
    names = {key, key.replace("_", "-")}
    out: list[str] = []
    values: list[str] = []
    first = -1  # where the joined option goes
    count = 0
    reading = False  # the arguments now are values of the option
    for arg in argv:
        body = arg[2:] if arg.startswith("--") else arg
        name, eq, value = body.partition("=")
        if name in names and (arg.startswith("--") or eq):
            count += 1
            first = len(out) if first < 0 else first
            if eq:
                values.append(value)
            reading = not eq
            continue
        if reading and not arg.startswith("--") and "=" not in arg:
            values.append(arg)
            continue
        reading = False
        out.append(arg)
    if count < 2:
        return list(argv)
    return out[:first] + [f"--{key}={','.join(values)}"] + out[first:]


def parse_args(argv: list[str] | None = None) -> Args:
    return build_config(Args, join_repeated(list(sys.argv[1:] if argv is None else argv), "robot"))


def main(argv: list[str] | None = None) -> dict:
    return convert(parse_args(argv))


def convert(args: Args) -> dict:
    if args.synthetic:
        Path(args.robonet_dir).mkdir(parents=True, exist_ok=True)
        rn.write_synthetic_trajectories(args.robonet_dir, args.synthetic, robots=("sawyer", "widowx", "franka"),
                                        progress=True)
    index = rn.RoboNetIndex.build(args.robonet_dir, num_workers=args.workers, verify_hash=args.verify_hash)
    print(f"indexed {len(index)} files ({len(index.skipped)} unreadable, skipped): {json.dumps(index.summary())}")
    index = index.filter(robot=args.robot or None, min_steps=args.min_steps, camera=args.camera)
    test_files = rn.read_split_file(args.test_list) if args.test_list else []
    missing = [n for n in test_files if n not in index]
    if missing:
        print(f"warning: {len(missing)} test-list files are not in the (filtered) index, e.g. {missing[:5]}")
    result = {"files": len(index), "test_files": len(test_files) - len(missing)}
    if not args.index_only:
        result.update(rn.convert_to_episodes(index, args.out, image_size=args.image_size, camera=args.camera,
                                             target_adim=args.target_adim, test_files=test_files))
        print(f"episodes in {args.out}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    cli_main(main, Args, __doc__)
