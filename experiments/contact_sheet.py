"""Contact sheet of the first frame of all 50 MT50 tasks from the project camera (for the README).

    python experiments/contact_sheet.py --out docs/images/mt50_contact_sheet.png --image-size 128
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw

from envs.metaworld import MT50_TASKS, make_env
from experiments.common import UsageError, cli_main
from foresight.checkpoint import atomic_write_bytes
from foresight.config import build_config


@dataclass
class ContactSheetConfig:
    out: str = "docs/images/mt50_contact_sheet.png"  # PNG to write
    image_size: int = 128  # H = W of each task's frame
    variation_seed: int = 0  # task variation shown


def contact_sheet(image_size: int = 128, variation_seed: int = 0, columns: int = 10) -> Image.Image:
    label_h = 14
    rows = -(-len(MT50_TASKS) // columns)
    sheet = Image.new("RGB", (columns * image_size, rows * (image_size + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, task in enumerate(MT50_TASKS):
        env = make_env(task, image_size=image_size, variation_seed=variation_seed)
        frame = env.reset()[0]["image"]  # uint8 [H, W, 3], first frame of the episode
        env.close()
        r, c = divmod(i, columns)
        x, y = c * image_size, r * (image_size + label_h)
        sheet.paste(Image.fromarray(frame), (x, y + label_h))
        draw.text((x + 2, y + 1), task.removesuffix("-v3")[:22], fill="black")
    return sheet


def main(argv: list[str] | None = None) -> None:
    cfg = build_config(ContactSheetConfig, sys.argv[1:] if argv is None else argv)
    if cfg.image_size < 1:
        raise UsageError(f"image_size: expected a positive integer, got {cfg.image_size}")
    buf = io.BytesIO()
    contact_sheet(cfg.image_size, cfg.variation_seed).save(buf, format="PNG", optimize=True)
    atomic_write_bytes(cfg.out, buf.getvalue())
    print(f"wrote {cfg.out} ({len(buf.getvalue()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    cli_main(main, ContactSheetConfig, __doc__)
