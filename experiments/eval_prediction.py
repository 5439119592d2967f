"""Evaluate any saved WorldModel on held-out clips with the papers' protocol.

    python experiments/eval_prediction.py --checkpoint runs/harp/quick/model --data-root data/metaworld_64
    python experiments/eval_prediction.py --checkpoint runs/conv/tiny/model --data-root synthetic --num-clips 32

For each of ``--num-clips`` test clips (evenly spread over the split) the model sees the context frames and the
future actions and draws ``--num-samples`` futures. Written to ``--out`` (default ``<checkpoint>/eval``):

* ``metrics.json``: PSNR / SSIM / LPIPS (best sample per clip and mean over samples, per-timestep curves), FVD
  over all samples and over one random sample per clip, and every setting that changes the numbers;
* ``per_timestep.png``: the per-timestep curves;
* ``strip.png``: for a few clips, one row with context + truth, then rows with context + samples (the best sample
  by LPIPS, or PSNR when LPIPS is off, first).

RoboNet: ``--robonet-dir FOLDER [--robonet-split LIST.txt]`` evaluates on the standard RoboNet test clips read straight
from the HDF5 files (first C+F frames, harmonised actions); a converted episode store (experiments/convert_robonet.py)
works through ``--data-root`` like Meta-World.
Memory: the predictions are held as float32, num_clips * num_samples * future * 3 * H * W * 4 bytes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import foresight  # noqa: E402
from foresight.checkpoint import atomic_write_json  # noqa: E402
from foresight.metrics import LPIPS, evaluate_predictions, load_i3d  # noqa: E402
from foresight.viz import save_png, save_strip  # noqa: E402

from experiments.common import UsageError, cli_main  # noqa: E402
from foresight.config import build_config  # noqa: E402


@dataclass
class Args:
    checkpoint: str = ""  # saved model directory (foresight.load); required
    data_root: str = "data/metaworld_64"  # episode store, or "synthetic" (ignored with --robonet-dir)
    robonet_dir: str = ""  # a folder of RoboNet .hdf5 files: evaluate on their standard clips directly
    robonet_split: str = ""  # file listing the test files (the common 256-file list); empty: every file
    robonet_camera: int = 0  # camera index of the RoboNet clips
    split: str = "test"  # held-out split of the episode store
    tasks: tuple[str, ...] = ()  # task names to keep, comma-separated or several (empty: all)
    num_clips: int = 256  # test clips, evenly spread over the split
    num_samples: int = 10  # futures per clip (papers: 100)
    context: int = -1  # context frames (-1: the model's)
    future: int = -1  # predicted frames (-1: the model's)
    stride: int = 1  # keep every stride-th frame (must match training)
    fvd_include_context: bool = True  # prepend context frames to real and sampled clips for FVD
    fvd_draws: int = 5  # one-sample-per-clip FVD draws
    no_fvd: bool = False  # skip FVD (no I3D pass)
    no_lpips: bool = False  # skip LPIPS (best sample then chosen by PSNR)
    batch_size: int = 16  # clips per predict call
    seed: int = 0  # seeds the sampled futures
    strip_clips: int = 4  # clips shown in strip.png
    strip_samples: int = 3  # samples per clip shown in strip.png
    device: str = ""  # default: cuda if available, else cpu
    out: str = ""  # output directory (default: <checkpoint>/eval)


def parse(argv: list[str] | None = None) -> Args:
    args = build_config(Args, sys.argv[1:] if argv is None else argv)
    if not args.checkpoint:
        raise UsageError("--checkpoint is required: a saved model directory (e.g. --checkpoint runs/harp/quick/model)")
    return args


def load_clips(args: Args, *, context: int, future: int, image_size: int, action_dim: int) -> dict[str, torch.Tensor]:
    """``num_clips`` held-out clips: frames [N, C+F, 3, H, W], actions [N, C+F-1, A]."""
    if args.robonet_dir:
        # The RoboNet protocol: the first C+F frames of each listed file, actions harmonised to the model's width.
        from foresight.data.robonet import standard_test_clips

        ds = standard_test_clips(args.robonet_dir, args.robonet_split or None, image_size=image_size,
                                 context_frames=context, future_frames=future, camera=args.robonet_camera,
                                 target_adim=max(action_dim, 4))
    elif args.data_root == "synthetic":
        from foresight.testing import SyntheticClips

        ds = SyntheticClips(args.num_clips, context_frames=context, future_frames=future, image_size=image_size,
                            action_dim=max(action_dim, 2), square=max(2, image_size // 8), seed=1)
    else:
        from foresight.data import ClipDataset, EpisodeDataset

        episodes = EpisodeDataset(args.data_root, split=args.split, tasks=list(args.tasks) or None)
        if len(episodes) == 0:
            raise UsageError(f"no '{args.split}' episodes in {args.data_root}")
        ds = ClipDataset(episodes, context=context, future=future, stride=args.stride, window_step=1, with_states=False)
    n = min(args.num_clips, len(ds))
    idx = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int))  # deterministic, spread over episodes
    items = [ds[int(i)] for i in idx]
    return {"frames": torch.stack([it["frames"] for it in items]).float(), "actions": torch.stack([it["actions"] for it in items]).float()}


def plot_curves(path: Path, metrics: dict, context: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    names = [n for n in ("psnr", "ssim", "lpips") if "per_timestep_best" in metrics.get(n, {})]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = metrics[name]
        steps = np.arange(1, len(m["per_timestep_best"]) + 1)
        ax.plot(steps, m["per_timestep_best"], marker="o", label=f"best of {metrics['num_samples']}")
        ax.plot(steps, m["per_timestep_mean"], marker=".", linestyle="--", label="mean over samples")
        ax.set_title(name.upper() + (" (lower is better)" if name == "lpips" else ""))
        ax.set_xlabel(f"predicted frame (after {context} context)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    import imageio.v3 as iio

    save_png(path, iio.imread(buf.getvalue()))


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = foresight.load(args.checkpoint, map_location=device).eval()
    context = model.context_frames if args.context < 0 else args.context
    future = model.future_frames if args.future < 0 else args.future
    clips = load_clips(args, context=context, future=future, image_size=model.image_size, action_dim=model.action_dim)
    frames, actions = clips["frames"], clips["actions"]  # [N, C+F, 3, H, W], [N, C+F-1, A]
    n = frames.shape[0]

    t0 = time.perf_counter()
    preds = []
    for i in tqdm(range(0, n, args.batch_size), desc="predict"):
        ctx = frames[i : i + args.batch_size, :context].to(device)  # [b, C, 3, H, W]
        # actions[:, C-1] moves the last context frame to the first predicted one.
        act = actions[i : i + args.batch_size, context - 1 :].to(device) if model.action_dim > 0 else None  # [b, F, A]
        preds.append(model.predict(ctx, act, args.num_samples, horizon=future, seed=args.seed + i).float().cpu())
    pred = torch.cat(preds)  # [N, S, F, 3, H, W]
    predict_s = time.perf_counter() - t0

    truth, ctx = frames[:, context:], frames[:, :context]
    t0 = time.perf_counter()
    metrics = evaluate_predictions(
        pred, truth, context=ctx,
        lpips=False if args.no_lpips else LPIPS().to(device),
        i3d=False if args.no_fvd else load_i3d(device=device),
        fvd_include_context=args.fvd_include_context, fvd_draws=args.fvd_draws, seed=args.seed,
        device=device, progress=True,
    )
    metrics_s = time.perf_counter() - t0
    out_dir = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    report = {
        "checkpoint": str(args.checkpoint),
        "model_type": type(model).__name__,
        "data": {"root": args.data_root, "split": args.split, "tasks": ",".join(args.tasks), "stride": args.stride},
        "context_frames": context,
        "future_frames": future,
        "seconds": {"predict": predict_s, "metrics": metrics_s},
        "args": {**asdict(args), "tasks": ",".join(args.tasks)},  # as before: the comma-separated string
        **metrics,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", report)
    plot_curves(out_dir / "per_timestep.png", metrics, context)

    rank_by = "lpips" if "best_sample" in metrics.get("lpips", {}) else "psnr"
    rows = []
    for b in range(min(args.strip_clips, n)):
        best = metrics[rank_by]["best_sample"][b]
        order = [best] + [s for s in range(args.num_samples) if s != best]
        rows.append(torch.cat([ctx[b], truth[b]]))  # [C+F, 3, H, W]
        rows += [torch.cat([ctx[b], pred[b, s]]) for s in order[: args.strip_samples]]
    save_strip(out_dir / "strip.png", rows)

    summary = {k: metrics[k].get("best", metrics[k].get("skipped")) for k in ("psnr", "ssim", "lpips") if k in metrics}
    if "fvd" in metrics:
        summary["fvd"] = metrics["fvd"].get("all_samples", metrics["fvd"].get("skipped"))
        summary["fvd_settings"] = metrics["fvd"]["settings"]
    print(f"wrote {out_dir}/metrics.json, per_timestep.png, strip.png")
    print(summary)
    return report


if __name__ == "__main__":
    cli_main(main, Args, __doc__)
