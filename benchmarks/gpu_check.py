"""The one prepared check for a lent GPU: throughput, sampling, planning, DDP and a checkpoint round trip, in minutes.

    python benchmarks/gpu_check.py --out docs/bench/gpu_check_h200.json          # CUDA: paper presets, bf16
    python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check.json         # CPU: tiny presets, fp32
    python benchmarks/gpu_check.py --sections train,ddp --steps 5 --out /tmp/c.json

Sections (each timed; a failure is recorded in the JSON with its message and the others still run):

* ``environment``: torch / CUDA versions, device, capability, bf16 support, SDPA backends (enabled, and whether
  each one runs HARP's attention shape), threads.
* ``train``: optimizer steps/s of HARP's transformer stage (on a randomly initialised tokenizer's codes) and of
  GHVAE's last stage, through `foresight.train.Trainer`'s own step (bf16 autocast on CUDA, fp32 on CPU);
  FLOPs per step counted once with `torch.utils.flop_counter.FlopCounterMode`, and MFU against a bf16 matmul
  peak measured in the same run (and against the nominal dense peak of a known GPU).
* ``sampling``: HARP ``predict`` of 200 candidates x 10 frames sharing one context expanded with stride 0.
* ``planning``: seconds per plan of `agents.mpc.VisualMPC` + CEM (200 samples x 3 iterations, horizon 10) with
  GHVAE's model-space cost.
* ``ddp``: two HARP training steps of the Trainer inside DistributedDataParallel, world size 1 (NCCL / gloo).
* ``checkpoint``: a few bf16 training steps, ``save_pretrained``, ``foresight.load``; weights and predictions
  under the same seed must be bit-identical.
* ``mt50``: the main job's whole pipeline at its ``tiny`` preset (`experiments/mt50_bc.py`: demo collection,
  HARP pretraining, behaviour cloning of HARP and CNN-LSTM, MT50 evaluation, report) in a temporary folder,
  training on the check's device; a smoke test of the pipeline on that machine, not a result.

The JSON is rewritten atomically after every section, so a run cut short keeps what it measured. Models have
random weights: speed does not depend on training. ``--budget-seconds`` is soft: each section gets a share of
what is left and stops its timed repeats when the share is spent (at least one timed repeat always runs).
See docs/gpu_check.md for every field.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable as a script from a checkout without installing
    sys.path.insert(0, str(_ROOT))

import contextlib
import datetime
import gc
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

import foresight
from foresight.checkpoint import atomic_write_json
from foresight.config import PRESET_NAMES, build_config, preset
from foresight.registry import get_model_class
from foresight.testing import SyntheticClips
from foresight.train import TrainConfig, Trainer

from experiments.common import UsageError, cli_main  # noqa: E402

SECTIONS = ("environment", "train", "sampling", "planning", "ddp", "checkpoint", "mt50")
# Relative share of the budget each section may spend on timed repeats (warm-ups and builds are not scaled).
SECTION_WEIGHTS = {"environment": 1, "train": 8, "sampling": 6, "planning": 3, "ddp": 2, "checkpoint": 4, "mt50": 3}
# Nominal dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; first match wins.
NOMINAL_BF16_TFLOPS = (("H200 NVL", 835.5), ("H200", 989.4))
SAMPLING_CANDIDATES, SAMPLING_HORIZON = 200, 10
PLAN_SAMPLES, PLAN_ITERATIONS, PLAN_HORIZON = 200, 3, 10


# ---------------------------------------------------------------------------------------------- run state
class Allowance:
    """A section's share of the budget: ``reps(n)`` yields up to n repeats, stopping when the share is spent."""

    def __init__(self, seconds: float):
        self.seconds = max(0.0, float(seconds))
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return max(0.0, self.seconds - (time.perf_counter() - self.t0))

    def part(self, fraction: float) -> "Allowance":
        return Allowance(self.left() * fraction)

    def reps(self, maximum: int, minimum: int = 1) -> Iterator[int]:
        t0 = time.perf_counter()
        for i in range(maximum):
            if i >= minimum and time.perf_counter() - t0 >= self.seconds:
                return
            yield i


@dataclass
class Check:
    """What every section needs: device, sizes, the budget, a scratch folder and the models built so far."""

    device: torch.device
    preset: str
    steps: int
    warmup: int
    batch_size: int | None
    budget_seconds: float
    workdir: Path
    start: float = field(default_factory=time.perf_counter)
    models: dict[str, Any] = field(default_factory=dict)
    peak: dict[str, Any] | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        """Training precision, chosen once: bf16 autocast on CUDA, fp32 on CPU (as the Trainer's "auto")."""
        return "bf16" if self.cuda else "fp32"

    def precisions(self) -> tuple[str, ...]:
        """Inference precisions to time: on CUDA bf16 autocast and plain fp32 (how a planner calls predict)."""
        return ("bf16", "fp32") if self.cuda else ("fp32",)

    def autocast(self, precision: str | None = None):
        if (precision or self.precision) == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def remaining(self) -> float:
        return self.budget_seconds - (time.perf_counter() - self.start)

    def build(self, name: str) -> Any:
        """A fresh model of registry type ``name`` at this run's preset, seeded, on the device, in the stage
        whose training speed matters (HARP: transformer; GHVAE: its last stage, full depth)."""
        model_cls = get_model_class(name)
        torch.manual_seed(0)
        model = model_cls(preset(model_cls.config_class, self.preset)).to(self.device)
        return model.set_stage(train_stage(model))

    def model(self, name: str) -> Any:
        """The shared model of type ``name`` (built once; sections may train it further)."""
        if name not in self.models:
            self.models[name] = self.build(name)
        return self.models[name]

    def train_config(self, steps: int) -> TrainConfig:
        base = preset(TrainConfig, self.preset)
        return TrainConfig(steps=max(1, steps), batch_size=self.batch_size or base.batch_size, lr=1e-4,
                           warmup_steps=0, device=str(self.device), precision=self.precision, log_every=10**9,
                           eval_every=0, save_every=0, resume=False, progress=False, seed=0)

    def trainer(self, model: Any, tag: str, steps: int) -> TrainerSteps:
        """A `Trainer` of ``model``'s training stage on synthetic clips, ready to step."""
        config = self.train_config(steps)
        clips = synthetic_clips(model.config, 2 * config.batch_size)
        return TrainerSteps(Trainer(model, clips, config=config, run_dir=self.workdir / f"run_{tag}",
                                    stage=train_stage(model)))


def train_stage(model: Any) -> str:
    """HARP: the transformer stage (the tokenizer's is an image VQ-GAN); GHVAE: its last stage (finetune or the
    deepest module), which runs every module."""
    return "transformer" if "transformer" in model.stages else model.stages[-1]


class MaterialisedClips(Dataset):
    """Clips held as tensors (frames uint8), so data loading costs nothing next to a GPU training step."""

    def __init__(self, frames: torch.Tensor, actions: torch.Tensor):
        self.frames, self.actions = frames, actions  # [N, C+F, 3, H, W] uint8, [N, C+F-1, A] float32

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"frames": self.frames[i], "actions": self.actions[i]}


def synthetic_clips(config: Any, num_clips: int) -> MaterialisedClips:
    """`SyntheticClips` in the clip-batch format of ``config``'s sizes, materialised once."""
    size = int(config.image_size)
    source = SyntheticClips(num_clips, context_frames=config.context_frames, future_frames=config.future_frames,
                            image_size=size, action_dim=max(2, int(config.action_dim)), square=max(2, size // 8))
    items = [source[i] for i in range(num_clips)]
    frames = (torch.stack([it["frames"] for it in items]) * 255).round().to(torch.uint8)
    actions = torch.stack([it["actions"] for it in items])[..., :config.action_dim]
    return MaterialisedClips(frames, actions)


class TrainerSteps:
    """Calls of the Trainer's own optimizer step (autocast, clipping, fused AdamW, scheduler) on its own loader.

    ``fit`` would also evaluate, write sample videos and a checkpoint at its last step; a timed loop needs the
    step alone, so this drives ``Trainer._train_step`` (the body of ``fit``'s loop) directly."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        trainer.module.train()  # as fit() does before its loop (predict and planning leave the model as it was)
        self.data = trainer._loader(trainer.train_dataset, trainer.position, seed=trainer.config.seed)

    def __call__(self, n: int = 1) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for _ in range(n):
            metrics = self.trainer._train_step(self.data)
        return metrics


def rounded(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


# ---------------------------------------------------------------------------------------------- sections
def section_environment(check: Check, allowance: Allowance) -> dict[str, Any]:
    b = torch.backends.cuda
    out: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "foresight": foresight.__version__, "git_commit": _git_commit(),
        "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "device": str(check.device), "device_name": "cpu", "capability": None, "bf16_supported": None,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "tf32_matmul_allowed": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    enabled = {}
    for key, fn in (("flash", "flash_sdp_enabled"), ("mem_efficient", "mem_efficient_sdp_enabled"),
                    ("cudnn", "cudnn_sdp_enabled"), ("math", "math_sdp_enabled")):
        try:
            enabled[key] = bool(getattr(b, fn)())
        except (AttributeError, RuntimeError):
            enabled[key] = None
    out["sdpa_enabled"] = enabled
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        out.update(device_name=props.name, capability=list(torch.cuda.get_device_capability(check.device)),
                   bf16_supported=bool(torch.cuda.is_bf16_supported()),
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(Exception):
            out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    out["sdpa_runs"] = _probe_sdpa(check)
    runs = ", ".join(f"{k} {'yes' if v['ok'] else 'no'}" for k, v in out["sdpa_runs"].items())
    out["summary"] = (f"torch {out['torch']}, {out['device_name']}, capability {out['capability']}, "
                      f"bf16 {out['bf16_supported']}, SDPA on HARP's shape: {runs}")
    return out


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None


def _probe_sdpa(check: Check) -> dict[str, dict[str, Any]]:
    """Whether each SDPA backend runs HARP's training attention (causal, its heads and window) in the training
    precision, and how long one forward takes: a backend that is enabled may still refuse a shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = preset(get_model_class("harp").config_class, check.preset)
    seq = (cfg.context_frames + cfg.future_frames) * cfg.grid ** 2
    dtype = torch.bfloat16 if check.cuda else torch.float32
    q, k, v = (torch.randn(2, cfg.heads, seq, cfg.width // cfg.heads, device=check.device, dtype=dtype)
               for _ in range(3))
    out = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # warm-up
                check.sync()
                t0 = time.perf_counter()
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                check.sync()
            out[name] = {"ok": True, "ms": rounded((time.perf_counter() - t0) * 1e3)}
        except Exception as e:  # a refused backend is a finding here, not a failure of the section
            out[name] = {"ok": False, "error": str(e).splitlines()[0][:200]}
    return out


def measure_matmul_peak(check: Check, seconds: float = 0.5) -> dict[str, Any]:
    """TFLOP/s of a large square matmul in the training precision (bf16 on CUDA, fp32 on CPU), this run."""
    if check.peak is not None:
        return check.peak
    n, dtype = (8192, torch.bfloat16) if check.cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=check.device, dtype=dtype)
    b = torch.randn(n, n, device=check.device, dtype=dtype)
    c = torch.empty_like(a)
    for _ in range(3):
        torch.mm(a, b, out=c)
    check.sync()
    iters, t0 = 0, time.perf_counter()
    while iters < 3 or time.perf_counter() - t0 < seconds:
        for _ in range(10 if check.cuda else 1):
            torch.mm(a, b, out=c)
            iters += 1
        check.sync()
    elapsed = time.perf_counter() - t0
    tflops = 2 * n**3 * iters / elapsed / 1e12
    name = torch.cuda.get_device_name(check.device) if check.cuda else ""
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS if k in name), None)
    check.peak = {"matmul_size": n, "matmul_dtype": str(dtype).replace("torch.", ""),
                  "matmul_tflops": rounded(tflops), "nominal_bf16_tflops": nominal}
    return check.peak


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward matmuls, convolutions, attention) by FlopCounterMode.

    PyTorch's counter has no formula for the fused CPU attention kernel that ``scaled_dot_product_attention``
    runs on CPU (``_scaled_dot_product_flash_attention_for_cpu``), so it would count CPU attention as zero; it is
    counted here with the same formula as the GPU kernels (2 matmuls: scores and weighted values)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def section_train(check: Check, allowance: Allowance) -> dict[str, Any]:
    peak = measure_matmul_peak(check)
    out: dict[str, Any] = {"precision": check.precision, **peak, "models": {}}
    names = ("harp", "ghvae")
    for i, name in enumerate(names):
        out["models"][name] = _train_throughput(check, name, allowance.part(1 / (len(names) - i)), peak)
    parts = []
    for name, r in out["models"].items():
        mfu = f"MFU {100 * r['mfu_vs_matmul']:.1f}%" if r["mfu_vs_matmul"] is not None else "MFU n/a"
        if r["mfu_vs_nominal"] is not None:
            mfu += f" ({100 * r['mfu_vs_nominal']:.1f}% of nominal)"
        tokens = f", {r['tokens_per_s']:.4g} tokens/s" if r.get("tokens_per_s") else ""
        parts.append(f"{name}[{r['stage']}] {r['steps_per_s']:.3g} steps/s, {r['clips_per_s']:.4g} clips/s{tokens}, "
                     f"{mfu}")
    out["summary"] = f"matmul {peak['matmul_tflops']} TFLOP/s ({peak['matmul_dtype']}); " + "; ".join(parts)
    return out


def _train_throughput(check: Check, name: str, allowance: Allowance, peak: dict[str, Any]) -> dict[str, Any]:
    model = check.model(name)
    step = check.trainer(model, f"train_{name}", steps=check.warmup + check.steps + 1)
    cfg, batch = model.config, step.trainer.config.batch_size
    if check.warmup:
        step(check.warmup)
    check.sync()
    flops = count_flops(step)  # one more step, counted (not timed)
    check.sync()
    done, last, t0 = 0, {}, time.perf_counter()
    for _ in allowance.reps(check.steps):
        last = step()
        done += 1
    check.sync()
    step_s = (time.perf_counter() - t0) / done
    if not math.isfinite(last.get("loss", math.nan)):
        raise FloatingPointError(f"{name}: non-finite training loss {last.get('loss')}")
    achieved = flops / step_s
    r = {"stage": step.trainer.stage, "batch_size": batch, "clip_frames": cfg.context_frames + cfg.future_frames,
         "image_size": cfg.image_size, "parameters": model.num_parameters(),
         "trainable_parameters": model.num_parameters(trainable_only=True), "warmup_steps": check.warmup,
         "timed_steps": done, "step_seconds": rounded(step_s), "steps_per_s": rounded(1 / step_s),
         "clips_per_s": rounded(batch / step_s), "flops_per_step": flops,
         "model_tflops_per_s": rounded(achieved / 1e12),
         "mfu_vs_matmul": rounded(achieved / (peak["matmul_tflops"] * 1e12)) if peak["matmul_tflops"] else None,
         "mfu_vs_nominal": (rounded(achieved / (peak["nominal_bf16_tflops"] * 1e12))
                         if peak["nominal_bf16_tflops"] else None),
         "loss": rounded(last["loss"])}
    if name == "harp":
        window = (cfg.context_frames + cfg.future_frames) * cfg.grid ** 2  # every slot of the C+F frame window
        r.update(window_tokens=window, tokens_per_s=rounded(batch * window / step_s))
    return r


def section_sampling(check: Check, allowance: Allowance) -> dict[str, Any]:
    model = check.model("harp")
    cfg = model.config
    n, horizon, size = SAMPLING_CANDIDATES, SAMPLING_HORIZON, cfg.image_size
    g = torch.Generator().manual_seed(0)
    # One context, expanded with stride 0 over the candidates, as VisualMPC passes it.
    context = torch.rand(1, cfg.context_frames, 3, size, size, generator=g).to(check.device).expand(n, -1, -1, -1, -1)
    actions = (torch.rand(n, horizon, cfg.action_dim, generator=g) * 2 - 1).to(check.device)
    out: dict[str, Any] = {"candidates": n, "horizon": horizon, "codes_per_frame": cfg.grid ** 2,
                           "context_stride0": context.stride(0) == 0,
                           "tf32_matmul_allowed": torch.backends.cuda.matmul.allow_tf32}
    precisions = check.precisions()
    for i, precision in enumerate(precisions):
        part = allowance.part(1 / (len(precisions) - i))
        with check.autocast(precision):
            model.predict(context[:2], actions[:2, :1], seed=0)  # warm-up: kernels, allocator, cache shapes
            check.sync()
            times = []
            for _ in part.reps(2):
                t0 = time.perf_counter()
                video = model.predict(context, actions, seed=0)
                check.sync()
                times.append(time.perf_counter() - t0)
            if tuple(video.shape) != (n, 1, horizon, 3, size, size) or not bool(torch.isfinite(video).all()):
                raise RuntimeError(f"predict returned {list(video.shape)} or non-finite frames")
            codes = torch.randint(0, cfg.codebook_size, (n * horizon, cfg.grid, cfg.grid), device=check.device)
            model.decode(codes[:2])
            check.sync()
            t0 = time.perf_counter()
            model.decode(codes)
            check.sync()
            decode_s = time.perf_counter() - t0
        best = min(times)
        out[precision] = {"predict_seconds": rounded(best), "frames_per_s": rounded(n * horizon / best),
                          "codes_per_s": rounded(n * horizon * cfg.grid ** 2 / best), "repeats": len(times),
                          "decode_seconds": rounded(decode_s)}
    out["summary"] = "; ".join(f"{p}: {out[p]['predict_seconds']} s per {n}x{horizon} predict "
                               f"({out[p]['frames_per_s']} frames/s)" for p in precisions)
    return out


def section_planning(check: Check, allowance: Allowance) -> dict[str, Any]:
    from agents.mpc import VisualMPC
    from agents.optimizers import CEM

    model = check.model("ghvae")
    cfg = model.config
    size, a = cfg.image_size, model.action_dim
    agent = VisualMPC(model, CEM(num_samples=PLAN_SAMPLES, iterations=PLAN_ITERATIONS), horizon=PLAN_HORIZON,
                      action_low=-np.ones(a), action_high=np.ones(a), cost="embedding", record=False, seed=0)
    g = torch.Generator().manual_seed(1)
    context = torch.rand(cfg.context_frames, 3, size, size, generator=g)
    goal = torch.rand(3, size, size, generator=g)
    out: dict[str, Any] = {"model": "ghvae", "stage": model.stage, "depth": model.depth, "cost": "embedding",
                           "num_samples": PLAN_SAMPLES, "iterations": PLAN_ITERATIONS, "horizon": PLAN_HORIZON}
    precisions = check.precisions()
    for i, precision in enumerate(precisions):
        part = allowance.part(1 / (len(precisions) - i))
        with check.autocast(precision):
            agent.reset(goal)
            agent.plan_from(context, imagine=False)  # warm-up
            check.sync()
            times = []
            for _ in part.reps(3):
                agent.reset(goal)  # a fresh episode each time: no warm start
                t0 = time.perf_counter()
                plan, _ = agent.plan_from(context, imagine=False)
                check.sync()
                times.append(time.perf_counter() - t0)
        if tuple(plan.shape) != (PLAN_HORIZON, a) or not bool(torch.isfinite(plan).all()):
            raise RuntimeError(f"plan_from returned actions {list(plan.shape)} or non-finite values")
        evaluations = agent.records[-1].evaluations
        best = min(times)
        out[precision] = {"seconds_per_plan": rounded(best), "mean_seconds_per_plan": rounded(sum(times) / len(times)),
                          "evaluations": evaluations, "candidates_per_s": rounded(evaluations / best),
                          "repeats": len(times)}
    out["summary"] = "; ".join(f"{p}: {out[p]['seconds_per_plan']} s per plan ({out[p]['evaluations']} candidates)"
                               for p in precisions)
    return out


def section_ddp(check: Check, allowance: Allowance) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    backend = "nccl" if check.cuda else "gloo"
    init_file = check.workdir / "ddp_init"
    init_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    init_s = time.perf_counter() - t0
    try:
        model = check.build("harp")  # its own model: DDP's hooks must not stay on the shared one
        step = check.trainer(model, "ddp", steps=2)
        trainer = step.trainer
        # The Trainer wraps itself in DDP only when WORLD_SIZE > 1; at world size 1 do what its __init__ does then.
        trainer.distributed, trainer.rank, trainer.world_size = True, dist.get_rank(), dist.get_world_size()
        ids = [check.device.index] if check.cuda else None
        trainer.module = DistributedDataParallel(trainer.model, device_ids=ids,
                                                 find_unused_parameters=trainer.config.ddp_find_unused_parameters)
        times, metrics = [], {}
        for _ in range(2):  # the first step also builds DDP's gradient buckets
            t1 = time.perf_counter()
            metrics = step()
            check.sync()
            times.append(time.perf_counter() - t1)
        probe = torch.ones(1, device=check.device)
        dist.all_reduce(probe)
        if float(probe) != 1.0 or not math.isfinite(metrics["loss"]):
            raise RuntimeError(f"all_reduce gave {float(probe)} (expected 1.0) or the loss is {metrics['loss']}")
        out = {"ran": True, "backend": backend, "world_size": dist.get_world_size(), "init_seconds": rounded(init_s),
               "first_step_seconds": rounded(times[0]), "step_seconds": rounded(times[1]),
               "batch_size": trainer.config.batch_size, "model": "harp", "stage": trainer.stage,
               "loss": rounded(metrics["loss"])}
        del step, trainer, model
    finally:
        dist.destroy_process_group()
    out["summary"] = f"{backend}, world size 1: step {out['step_seconds']} s (first {out['first_step_seconds']} s)"
    return out


def section_checkpoint(check: Check, allowance: Allowance) -> dict[str, Any]:
    out: dict[str, Any] = {"train_precision": check.precision, "models": {}}
    for name in ("harp", "ghvae"):
        out["models"][name] = _round_trip(check, name)
    out["all_identical"] = all(r["weights_identical"] and r["predictions_identical"] for r in out["models"].values())
    out["summary"] = ", ".join(f"{n}: weights {'=' if r['weights_identical'] else '!='}, predictions "
                               f"{'identical' if r['predictions_identical'] else 'DIFFER'}"
                               for n, r in out["models"].items())
    return out


def _round_trip(check: Check, name: str) -> dict[str, Any]:
    model = check.model(name)
    check.trainer(model, f"ckpt_{name}", steps=3)(3)  # under the Trainer's autocast (bf16 on CUDA)
    check.sync()
    directory = check.workdir / f"checkpoint_{name}"
    t0 = time.perf_counter()
    model.save_pretrained(directory)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = foresight.load(directory, map_location=check.device)
    load_s = time.perf_counter() - t0
    mine, theirs = model.state_dict(), loaded.state_dict()
    weights_identical = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    cfg, size = model.config, model.config.image_size
    g = torch.Generator().manual_seed(2)
    horizon = min(2, cfg.future_frames)
    context = torch.rand(2, cfg.context_frames, 3, size, size, generator=g).to(check.device)
    actions = (torch.rand(2, horizon, cfg.action_dim, generator=g) * 2 - 1).to(check.device)
    predictions: dict[str, Any] = {}
    for precision in check.precisions():
        with check.autocast(precision):
            first = model.predict(context, actions, seed=0)
            again = model.predict(context, actions, seed=0)
            other = loaded.predict(context, actions, seed=0)
        predictions[precision] = {"identical": bool(torch.equal(first, other)),
                                  "repeat_identical": bool(torch.equal(first, again)),
                                  "max_abs_diff": float((first.float() - other.float()).abs().max())}
    size_mib = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20
    return {"stage": loaded.stage, "trained_steps": 3, "stage_restored": loaded.stage == model.stage,
            "weights_identical": bool(weights_identical),
            "predictions_identical": all(p["identical"] for p in predictions.values()), "predictions": predictions,
            "save_seconds": rounded(save_s), "load_seconds": rounded(load_s), "checkpoint_mib": rounded(size_mib)}


def section_mt50(check: Check, allowance: Allowance) -> dict[str, Any]:
    """`experiments/mt50_bc.py --preset tiny` end to end in a temporary folder, training on the check's device."""
    from experiments import mt50_bc

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="gpu_check_mt50_") as tmp:
        t0 = time.perf_counter()
        result = mt50_bc.main(["--preset", "tiny", f"run_dir={tmp}/run", f"data_root={tmp}/data",
                               "methods=[harp,cnn_lstm]", f"threads={threads}"])
        seconds = time.perf_counter() - t0
        report = Path(tmp, "run", "results.md").is_file()
    torch.set_num_threads(threads)
    success = {m: rounded(float(np.mean(v))) for m, v in result.items()}
    return {"seconds": rounded(seconds), "mean_success": success, "report_written": report,
            "summary": f"tiny pipeline {seconds:.0f} s, report written: {report}, success {success}"}


SECTION_FUNCTIONS: dict[str, Callable[[Check, Allowance], dict[str, Any]]] = {
    "environment": section_environment, "train": section_train, "sampling": section_sampling,
    "planning": section_planning, "ddp": section_ddp, "checkpoint": section_checkpoint, "mt50": section_mt50,
}


# ---------------------------------------------------------------------------------------------- driver
def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become null (json.dumps would write NaN, which is not JSON)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run_check(check: Check, sections: list[str], out: Path, report: dict[str, Any]) -> dict[str, Any]:
    pending = list(sections)
    for name in sections:
        share = max(0.0, check.remaining()) * SECTION_WEIGHTS[name] / sum(SECTION_WEIGHTS[n] for n in pending)
        pending.remove(name)
        entry: dict[str, Any] = {"ok": False, "error": None, "budget_share_seconds": rounded(share)}
        if check.cuda:
            torch.cuda.reset_peak_memory_stats(check.device)
        t0 = time.perf_counter()
        try:
            entry["results"] = SECTION_FUNCTIONS[name](check, Allowance(share))
            entry["ok"] = True
        except Exception as e:  # recorded, and the next section still runs
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-4000:]
        entry["seconds"] = rounded(time.perf_counter() - t0)
        for model in check.models.values():  # gradients and a Trainer's optimizer state must not pile up
            model.zero_grad(set_to_none=True)
        gc.collect()
        if check.cuda:
            entry["peak_memory_gib"] = rounded(torch.cuda.max_memory_allocated(check.device) / 2**30)
            torch.cuda.empty_cache()
        report["sections"][name] = entry
        report["total_seconds"] = rounded(time.perf_counter() - check.start)
        report["problems"] = _problems(report)
        atomic_write_json(out, _clean(report))
        print(_summary_line(name, entry), flush=True)
    return report


def _problems(report: dict[str, Any]) -> list[str]:
    """One line per failed section or failed check, for a reader who opens only the top of the file."""
    problems = [f"{n}: {e['error']}" for n, e in report["sections"].items() if not e["ok"]]
    ckpt = report["sections"].get("checkpoint", {}).get("results")
    if ckpt and not ckpt["all_identical"]:
        problems.append("checkpoint: a round trip changed the weights or the predictions")
    return problems


def _summary_line(name: str, entry: dict[str, Any]) -> str:
    status = "ok " if entry["ok"] else "ERR"
    text = entry["results"].get("summary", "") if entry["ok"] else entry["error"]
    return f"  {name:<12} {status} {entry['seconds']:>7.1f} s  {text}"


@dataclass
class GpuCheckConfig:
    """The GPU check's options."""

    # --preset NAME sets the model size preset (the field below), as the other options do
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {name: {"preset": name} for name in PRESET_NAMES}

    out: str = ""                                       # the JSON file to write (atomically, after every section); required
    device: Literal["auto", "cpu", "cuda"] = "auto"     # auto: CUDA when present, else CPU
    preset: Literal["tiny", "quick", "paper"] | None = None  # model size preset (default: paper on CUDA, tiny on CPU)
    steps: int | None = None                            # timed training steps per model (default: 20 on CUDA, 3 on CPU)
    warmup: int | None = None                           # untimed training steps first (default: 3 on CUDA, 1 on CPU)
    batch_size: int | None = None
    """clips per training step (default: the TrainConfig preset of --preset: 32 paper, 4 tiny)"""
    budget_seconds: float | None = None
    """soft budget for the whole run; sections scale their timed repeats down to fit (default: 360 on CUDA, 120 on
    CPU)"""
    sections: tuple[str, ...] = SECTIONS                # comma list of sections to run (default: all)


def _check_options(cfg: GpuCheckConfig) -> GpuCheckConfig:
    """``cfg`` with its sections in the canonical order; a UsageError for a value out of range."""
    if not cfg.out:
        raise UsageError("--out: required (the JSON file to write)")
    for name in ("steps", "batch_size", "budget_seconds"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    if cfg.warmup is not None and cfg.warmup < 0:
        raise UsageError(f"--warmup: expected an int >= 0, got {cfg.warmup}")
    unknown = sorted(set(cfg.sections) - set(SECTIONS))
    if unknown or not cfg.sections:
        raise UsageError(f"--sections: unknown section(s) {unknown or list(cfg.sections)}; "
                         f"choose a comma list of {', '.join(SECTIONS)}")
    return replace(cfg, sections=tuple(s for s in SECTIONS if s in cfg.sections))


def parse_args(argv: list[str] | None) -> GpuCheckConfig:
    """The options of ``argv`` (default: the command line). A mistake in them is one line and exit status 2 even
    when `main` is called directly (as tests/test_gpu_check.py does), since nothing has run yet."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(lambda a: _check_options(build_config(GpuCheckConfig, a)), argv=argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    preset_name = cfg.preset or ("paper" if cuda else "tiny")
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    check = Check(device=device, preset=preset_name, steps=cfg.steps or (20 if cuda else 3),
                  warmup=cfg.warmup if cfg.warmup is not None else (3 if cuda else 1),
                  batch_size=cfg.batch_size, budget_seconds=cfg.budget_seconds or (360.0 if cuda else 120.0),
                  workdir=workdir)
    report: dict[str, Any] = {
        "script": "benchmarks/gpu_check.py", "format": 1,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "options": {"device": str(device), "preset": preset_name, "steps": check.steps, "warmup": check.warmup,
                    "batch_size": cfg.batch_size, "budget_seconds": check.budget_seconds,
                    "sections": list(cfg.sections)},
        "sections": {}, "problems": [], "total_seconds": None,
    }
    print(f"gpu_check: {device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}), preset {preset_name}, "
          f"budget {check.budget_seconds:.0f} s -> {cfg.out}", flush=True)
    try:
        run_check(check, list(cfg.sections), Path(cfg.out), report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"gpu_check: {report['total_seconds']} s, {len(report['problems'])} problem(s)"
          + "".join(f"\n  problem: {p}" for p in report["problems"]), flush=True)
    return report


if __name__ == "__main__":
    cli_main(main, GpuCheckConfig, __doc__)
