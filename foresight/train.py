"""The one training loop every model uses.

    trainer = Trainer(model, clips, config=TrainConfig(steps=2000), run_dir="runs/harp/tokenizer", stage="tokenizer")
    trainer.fit()

What it does for every model and stage:

* device chosen once (CUDA if present, else CPU); bf16 autocast and TF32 on CUDA;
* AdamW over the stage's trainable parameters, linear warm-up + cosine decay, gradient clipping, gradient
  accumulation, optional EMA of the weights;
* one global batch per optimizer step drawn by a seeded, resumable sampler: epoch ``e`` visits the dataset in
  the order ``randperm(n, seed + e)``; randomness inside ``dataset[i]`` (augmentation) is seeded per item from
  ``(seed, position)``, so a resumed run sees exactly the batches an uninterrupted one would;
* tqdm progress, JSON-lines metrics (``metrics.jsonl``), optional TensorBoard, periodic evaluation and sample
  videos (PNG strips + GIFs under ``videos/``);
* checkpoints ``checkpoints/<step>/`` (model files: config.json + model.safetensors + stats.json, and a separate
  ``training_state/``) written atomically, with ``checkpoints/last`` pointing at the newest;
* exact resume: model, optimizer, scheduler, EMA, RNG states and data position;
* multi-GPU / multi-process with ``torchrun`` through DistributedDataParallel (NCCL on CUDA, gloo on CPU). The
  global batch is ``batch_size * world_size * grad_accum``; rank r takes its slice, so K steps on N processes
  equal K steps of one process with the combined batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from foresight import checkpoint as ckpt
from foresight.config import ConfigError, to_dict
from foresight.world_model import WorldModel

__all__ = ["TrainConfig", "Trainer", "select_device", "seed_everything"]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by all models."""

    steps: int = 1000                 # optimizer steps to train (total, across resumes)
    max_minutes: float = 0.0          # budget in minutes of training steps across resumes (0: none); stops at steps or budget
    batch_size: int = 16              # clips per process per micro-batch
    grad_accum: int = 1               # micro-batches per optimizer step
    lr: float = 3e-4                  # peak learning rate
    min_lr_ratio: float = 0.1         # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100           # linear warm-up from 0
    weight_decay: float = 0.01        # AdamW decoupled weight decay (not on biases / norms / embeddings)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0            # max global grad norm; 0 disables
    ema_decay: float = 0.0            # EMA of weights; 0 disables. Checkpoints then hold the EMA weights.
    seed: int = 0                     # seeds data order, augmentation and model randomness
    device: str = "auto"              # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"           # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16", "fp32"
    num_workers: int = 0              # DataLoader workers
    log_every: int = 10               # steps between metrics.jsonl lines
    eval_every: int = 500             # steps between evaluations (0: only at the end)
    eval_batches: int = 8             # batches per evaluation
    sample_every: int = 0             # steps between sample videos (0: only at the end)
    save_every: int = 500             # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2         # newest step checkpoints kept on disk
    resume: bool = True               # continue from run_dir/checkpoints/last when it exists
    tensorboard: bool = False         # also write TensorBoard scalars (needs the tensorboard package)
    compile: bool = False             # torch.compile the model (CUDA)
    ddp_find_unused_parameters: bool = False  # set for models whose stage leaves some parameters unused
    progress: bool = True             # tqdm progress bar

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for settings the loop cannot run with (e.g. ``steps=0``: nothing to train and no
        checkpoint to export)."""
        positive = {"steps": "optimizer steps to train", "batch_size": "clips per process per micro-batch",
                    "grad_accum": "micro-batches per optimizer step", "log_every": "steps between log lines"}
        for name, meaning in positive.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{name}: must be positive ({meaning}), got {value!r}")
        for name in ("warmup_steps", "eval_every", "sample_every", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ConfigError(f"{name}: expected an int >= 0 (0 disables), got {value!r}")
        if isinstance(self.max_minutes, bool) or not isinstance(self.max_minutes, numbers.Real) \
                or not self.max_minutes >= 0:
            raise ConfigError(f"max_minutes: expected minutes >= 0 (0: no budget), got {self.max_minutes!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: expected a value in [0, 1) (0 disables), got {self.ema_decay!r}")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"steps": 20, "batch_size": 4, "warmup_steps": 2, "log_every": 5, "eval_every": 0,
                 "save_every": 0, "eval_batches": 1},
        "quick": {"steps": 2000, "batch_size": 16, "warmup_steps": 100},
        "paper": {"steps": 50000, "batch_size": 32, "warmup_steps": 1000, "save_every": 2500, "eval_every": 2500},
    }


def select_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU; never hard-coded."""
    if name == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The global RNG states as tensors, ints, floats and strings only, so that a saved training state loads
    with ``torch.load(weights_only=True)`` (numpy's state holds an ndarray, which that refuses)."""
    version, mt, gauss = random.getstate()  # (3, 625 ints, None or float)
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _ResumableBatchSampler:
    """Infinite stream of this rank's index batches, starting at a given global micro-batch position.

    Position p covers epoch ``p // batches_per_epoch``; each epoch is a seeded permutation, cut into global
    batches of ``global_batch`` indices (the remainder is dropped); rank r takes slice r of each. Every index is
    yielded together with a per-item seed so that augmentation is reproducible whatever the worker layout.
    """

    def __init__(self, n: int, *, batch_size: int, world_size: int, rank: int, seed: int, start: int):
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise ValueError(f"dataset has {n} items, fewer than one global batch of {self.global_batch} "
                             f"(batch_size={batch_size} x world_size={world_size})")
        self.batches_per_epoch = n // self.global_batch
        self.seed, self.start = seed, start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        position = self.start
        epoch, perm = -1, None
        while True:
            e, b = divmod(position, self.batches_per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                perm, epoch = torch.randperm(self.n, generator=g).tolist(), e
            lo = b * self.global_batch + self.rank * self.batch_size
            item_seed = (self.seed * 1_000_003 + position) * 4096
            yield [(perm[lo + i], item_seed + self.rank * self.batch_size + i, e) for i in range(self.batch_size)]
            position += 1


class _SeededItems(Dataset):
    """``dataset[(index, item_seed, epoch)]``: fetch ``dataset[index]`` with the global RNGs seeded by
    ``item_seed`` (restored afterwards, so the training RNG stream is untouched). Datasets that seed their own
    augmentation from ``(seed, epoch, index)`` get ``set_epoch(epoch)`` first; this runs inside the DataLoader
    worker that fetches the item, so it holds with any number of workers."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        index, item_seed, epoch = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            np.random.seed(item_seed % 2**32)
            random.seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


@contextlib.contextmanager
def _preserved_rng():
    """Run a block (evaluation, sample videos) without disturbing the training RNG streams."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _accumulate(totals: dict[str, float], loss: torch.Tensor, metrics: dict[str, Any], weight: float) -> None:
    """Add ``weight`` x (the loss and each metric) to ``totals``. The returned loss is the one "loss": a model
    that also reports it in its metrics (GHVAE does) must not have it added twice."""
    totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * weight
    for k, v in metrics.items():
        if k != "loss":
            totals[k] = totals.get(k, 0.0) + float(v) * weight


def _lr_factor(step: int, *, warmup: int, total: int, min_ratio: float, time_progress: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine to ``min_ratio`` at the end of training: at step
    ``total`` or, with a wall-clock budget, when ``time_progress`` (the budget's fraction used) reaches 1."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_progress))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# Modules whose ``weight`` is a linear map (decayed) and modules whose parameters are tables or gains (not).
_DECAYED_MODULES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_NO_DECAY_MODULES = (nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                     nn.modules.batchnorm._NormBase) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _param_groups(model: nn.Module, params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on the weights of linear and conv layers only (GPT-2 / minGPT practice: decaying
    biases, norm gains and embedding tables hurts).

    Decided by the module that owns a parameter, not by its name: a name rule ("embed" in the name) decayed
    HARP's ``tok_emb`` and its position tables. Parameters held directly by other modules (position tables such
    as HARP's ``time_emb`` / ``row_emb`` / ``col_emb``, start tokens, a trained VQ codebook) are tables, not
    linear maps, and get no decay; a parameter shared with an embedding or norm gets none either.
    """
    decayed: set[int] = set()
    exempt: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, _NO_DECAY_MODULES):
                exempt.add(id(p))
            elif isinstance(module, _DECAYED_MODULES) and name == "weight":
                decayed.add(id(p))
    decay = [p for p in params if id(p) in decayed and id(p) not in exempt]
    no_decay = [p for p in params if id(p) not in decayed or id(p) in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class Trainer:
    """Trains one stage of a `WorldModel` (or any module with ``forward(batch) -> (loss, metrics)``)."""

    def __init__(
        self,
        model: WorldModel,
        train_dataset: Dataset,
        *,
        config: TrainConfig | None = None,
        run_dir: str | Path,
        stage: str | None = None,
        eval_dataset: Dataset | None = None,
        eval_fn: Callable[[WorldModel, int], dict[str, float]] | None = None,
        collate_fn: Callable | None = None,
        run_config: Any = None,
    ):
        self.config = config or TrainConfig()
        self.config.validate()  # also catches fields changed after construction
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.collate_fn = collate_fn
        self.eval_fn = eval_fn
        self.run_config = run_config

        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and self.config.device != "cpu" else "gloo"
            dist.init_process_group(backend=backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0

        self.device = select_device(self.config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision: expected 'auto', 'bf16' or 'fp32', got {precision!r}")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None

        seed_everything(self.config.seed)
        self.model = model.to(self.device)
        if stage is not None:
            self.model.set_stage(stage)
        self.stage = getattr(self.model, "stage", None)
        # Sample videos need frames; a stage dataset may hold something else (HARP's codes), so keep the clips.
        self._sample_source = eval_dataset if eval_dataset is not None else train_dataset
        self.train_dataset = self.model.stage_dataset(train_dataset, self.stage) if hasattr(self.model, "stage_dataset") else train_dataset
        self.eval_dataset = (self.model.stage_dataset(eval_dataset, self.stage)
                             if eval_dataset is not None and hasattr(self.model, "stage_dataset") else eval_dataset)

        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"stage {self.stage!r} of {type(model).__name__} has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, params, self.config.weight_decay), lr=self.config.lr, betas=self.config.betas,
            fused=self.device.type == "cuda")
        # Wall time spent in training steps (data, forward, backward, update; not evaluation or checkpoints), across
        # resumes: what ``max_minutes`` budgets. The cosine follows the budget or the steps, whichever is ahead.
        self.train_seconds = 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, warmup=self.config.warmup_steps, total=self.config.steps,
                                                 min_ratio=self.config.min_lr_ratio,
                                                 time_progress=self._time_progress()))
        self.ema: dict[str, torch.Tensor] | None = None
        if self.config.ema_decay > 0:
            self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

        self.step = 0
        self.position = 0  # global micro-batches consumed
        self._tb = None
        if self.config.resume:
            self._maybe_resume()

        module: nn.Module = self.model
        if self.config.compile:
            module = torch.compile(module)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=ids, find_unused_parameters=self.config.ddp_find_unused_parameters)
        self.module = module

    # ------------------------------------------------------------------ data
    def _loader(self, dataset: Dataset, start: int, *, seed: int) -> Iterator[Any]:
        sampler = _ResumableBatchSampler(len(dataset), batch_size=self.config.batch_size, world_size=self.world_size,
                                         rank=self.rank, seed=seed, start=start)
        loader = DataLoader(_SeededItems(dataset), batch_sampler=sampler, num_workers=self.config.num_workers,
                            collate_fn=self.collate_fn, pin_memory=self.device.type == "cuda",
                            persistent_workers=self.config.num_workers > 0,
                            # its own generator: creating the iterator must not draw from the global RNG,
                            # or a resumed run would diverge from an uninterrupted one.
                            generator=torch.Generator().manual_seed(seed))
        return iter(loader)

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _time_progress(self) -> float:
        """The fraction of the ``max_minutes`` budget used (0 without a budget)."""
        budget = self.config.max_minutes * 60
        return self.train_seconds / budget if budget > 0 else 0.0

    @property
    def finished(self) -> bool:
        """``config.steps`` reached, or the ``max_minutes`` budget spent."""
        return self.step >= self.config.steps or self._time_progress() >= 1.0

    def _out_of_time(self) -> bool:
        if self.config.max_minutes <= 0:
            return False
        spent = self._time_progress() >= 1.0
        if self.distributed:  # clocks differ between ranks: stop together when rank 0's budget is spent
            flag = torch.tensor([float(spent)], device=self.device)
            dist.broadcast(flag, src=0)
            spent = bool(flag.item())
        return spent

    def fit(self) -> dict[str, float]:
        """Train until ``config.steps`` or the ``max_minutes`` budget; returns the last logged metrics."""
        cfg = self.config
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_config()
        data = self._loader(self.train_dataset, self.position, seed=cfg.seed)
        progress = None
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.stage or ''}".strip(),
                            dynamic_ncols=True)
        last: dict[str, float] = {}
        window: dict[str, float] = {}
        window_n, t0, samples = 0, time.perf_counter(), 0
        self.module.train()
        out_of_time = self._out_of_time()
        while self.step < cfg.steps and not out_of_time:
            metrics = self._train_step(data)
            out_of_time = self._out_of_time()
            samples += cfg.batch_size * cfg.grad_accum * self.world_size
            for k, v in metrics.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            self.step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            final = self.step == cfg.steps or out_of_time
            if self.step % cfg.log_every == 0 or final:
                elapsed = time.perf_counter() - t0
                last = {k: v / window_n for k, v in window.items()}
                last.update(lr=self.scheduler.get_last_lr()[0], samples_per_s=samples / max(elapsed, 1e-9))
                self._log("train", last)
                window, window_n, t0, samples = {}, 0, time.perf_counter(), 0
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or final:
                self.evaluate()
            if (cfg.sample_every and self.step % cfg.sample_every == 0) or final:
                self.write_samples()
            if (cfg.save_every and self.step % cfg.save_every == 0) or final:
                self.save_checkpoint()
        if progress is not None:
            progress.close()
        return last

    def _train_step(self, data: Iterator[Any]) -> dict[str, float]:
        cfg = self.config
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = _move(next(data), self.device)
            self.position += 1
            sync = micro == cfg.grad_accum - 1 or not self.distributed
            with (contextlib.nullcontext() if sync else self.module.no_sync()), self._autocast():
                loss, metrics = self.module(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step} (metrics: {metrics})")
            (loss / cfg.grad_accum).backward()
            _accumulate(totals, loss, metrics, 1 / cfg.grad_accum)
        if cfg.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        self.optimizer.step()
        self.train_seconds += time.perf_counter() - started  # before the scheduler: its cosine reads the budget
        self.scheduler.step()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if n in self.ema:
                        self.ema[n].lerp_(p.detach(), 1 - cfg.ema_decay)
        if self.distributed:
            keys = sorted(totals)
            vec = torch.tensor([totals[k] for k in keys], device=self.device)
            dist.all_reduce(vec)
            totals = dict(zip(keys, (vec / self.world_size).tolist()))
        return totals

    # ------------------------------------------------------------------ evaluation and samples
    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily swap the EMA weights in (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        params = dict(self.model.named_parameters())
        backup = {n: params[n].detach().clone() for n in self.ema}
        with torch.no_grad():
            for n, v in self.ema.items():
                params[n].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, v in backup.items():
                    params[n].copy_(v)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_dataset is None and self.eval_fn is None:
            return {}
        out: dict[str, float] = {}
        was_training = self.model.training
        self.model.eval()
        with self.ema_weights(), _preserved_rng():
            if self.eval_dataset is not None and len(self.eval_dataset) >= self.config.batch_size * self.world_size:
                # A fixed set of eval batches (seeded, independent of the training stream).
                data = self._loader(self.eval_dataset, 0, seed=self.config.seed + 12345)
                totals: dict[str, float] = {}
                n = min(self.config.eval_batches, len(self.eval_dataset) // (self.config.batch_size * self.world_size))
                for _ in range(n):
                    batch = _move(next(data), self.device)
                    with self._autocast():
                        loss, metrics = self.model(batch)
                    _accumulate(totals, loss, metrics, 1 / n)
                out.update(totals)
            if self.eval_fn is not None and self.is_main:
                out.update(self.eval_fn(self.model, self.step))
        self.model.train(was_training)
        if out:
            self._log("eval", out)
        return out

    @torch.no_grad()
    def write_samples(self, num_clips: int = 4) -> Path | None:
        """Write a PNG strip and GIFs of context / truth / prediction for a few eval (or train) clips."""
        if not self.is_main or not hasattr(self.model, "sample_video"):
            return None
        with _preserved_rng():
            return self._write_samples(self._sample_source, num_clips)

    def _write_samples(self, source: Dataset, num_clips: int) -> Path | None:
        try:
            items = [source[i] for i in range(min(num_clips, len(source)))]
            if not items or not isinstance(items[0], dict) or "frames" not in items[0]:
                return None
            batch = _move(torch.utils.data.default_collate(items), self.device)
            with self.ema_weights():
                video = self.model.sample_video(batch, num_samples=1, seed=self.config.seed)
        except (NotImplementedError, RuntimeError, ValueError) as e:
            # A stage that cannot predict yet (e.g. HARP's tokenizer stage) skips samples, loudly once.
            if not getattr(self, "_warned_samples", False):
                print(f"[foresight] no sample videos for stage {self.stage!r}: {e}")
                self._warned_samples = True
            return None
        if video is None:
            return None
        from foresight.viz import save_gif, save_strip, side_by_side

        out = self.run_dir / "videos"
        rows = []
        for i in range(video["truth"].shape[0]):
            truth = torch.cat([video["context"][i], video["truth"][i]])
            pred = torch.cat([video["context"][i], video["prediction"][i, 0]])
            rows += [truth, pred]
        path = save_strip(out / f"step{self.step:09d}.png", rows)
        save_gif(out / f"step{self.step:09d}.gif", side_by_side(rows[0], rows[1]))
        return path

    # ------------------------------------------------------------------ logging
    def _log(self, split: str, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        row = {"step": self.step, "split": split, "stage": self.stage, "time": time.time(), **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.config.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(self.run_dir / "tb")
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", v, self.step)

    def _write_run_config(self) -> None:
        from foresight.checkpoint import atomic_write_text
        import yaml

        doc = {"train": to_dict(self.config), "stage": self.stage, "world_size": self.world_size,
               "device": str(self.device)}
        if self.run_config is not None:
            doc["run"] = to_dict(self.run_config) if dataclasses.is_dataclass(self.run_config) else self.run_config
        if hasattr(self.model, "config") and dataclasses.is_dataclass(self.model.config):
            doc["model"] = {"type": getattr(self.model, "type", ""), **to_dict(self.model.config)}
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(doc, sort_keys=False))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/<step>/`` atomically and move ``last`` to it (rank 0 only)."""
        if self.distributed:
            dist.barrier()
        if not self.is_main:
            return None
        step_dir = self.ckpt_dir / ckpt.step_dir_name(self.step)
        with ckpt.atomic_directory(step_dir) as tmp:
            with self.ema_weights():
                self.model.write_pretrained_files(tmp)
            state_dir = tmp / ckpt.TRAINING_STATE_DIR
            state_dir.mkdir()
            state = {
                "step": self.step,
                "position": self.position,
                "world_size": self.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
                "stage": self.stage,
                "train_seconds": self.train_seconds,
            }
            if self.ema is not None:
                state["ema"] = self.ema
                state["raw_model"] = {n: p.detach().cpu() for n, p in self.model.named_parameters() if n in self.ema}
            torch.save(state, state_dir / "state.pt")
            (state_dir / "trainer.json").write_text(json.dumps(
                {"step": self.step, "position": self.position, "stage": self.stage,
                 "train_seconds": round(self.train_seconds, 3), "finished": self.finished,
                 "train_config": to_dict(self.config)}, indent=2) + "\n")
        ckpt.update_last_link(self.ckpt_dir, step_dir)
        for old in ckpt.list_checkpoints(self.ckpt_dir)[:-max(1, self.config.keep_checkpoints)]:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        return step_dir

    def _maybe_resume(self) -> None:
        last = self.ckpt_dir / ckpt.LAST_LINK
        if not last.exists():
            return
        step_dir = last.resolve()
        state_path = step_dir / ckpt.TRAINING_STATE_DIR / "state.pt"
        if not state_path.is_file():
            raise ckpt.CheckpointError(f"cannot resume: missing training state {state_path}")
        try:
            # weights_only: a training state is tensors, numbers, strings and containers (see _rng_state);
            # anything else in the file (a pickled callable) is refused rather than run.
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's message opens with a paragraph about its defaults; the line that names the refused
            # object ("Trying to load unsupported GLOBAL os.system ...") is the one a user needs.
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            detail = next((line for line in lines if "GLOBAL" in line), lines[0])
            if "numpy" in detail:
                detail += ("; training states written before RNG states were stored as tensors hold a pickled "
                           "numpy array: start a new run from this checkpoint's model instead of resuming")
            raise ckpt.CheckpointError(
                f"cannot resume: corrupt training state {state_path}: it is truncated or holds objects other than "
                f"tensors, numbers, strings and containers, which are refused because unpickling them can run "
                f"code ({detail})") from e
        except Exception as e:  # torch raises several types for truncated files
            raise ckpt.CheckpointError(f"cannot resume: corrupt training state {state_path} ({e})") from e
        rng = state.get("rng") if isinstance(state, dict) else None
        if not isinstance(rng, dict) or not isinstance(rng.get("numpy"), dict):
            raise ckpt.CheckpointError(
                f"cannot resume: training state {state_path} is not in this version's format (expected a dict "
                "with tensor-only RNG states)")
        if state.get("stage") != self.stage:
            raise ckpt.CheckpointError(
                f"cannot resume: {step_dir} was saved in stage {state.get('stage')!r}, this run trains {self.stage!r}; "
                "use a separate run directory per stage")
        if state.get("world_size", 1) != self.world_size:
            print(f"[foresight] resuming a run saved with world_size={state['world_size']} on {self.world_size}: "
                  "data order continues by global batch position")
        ckpt.load_weights(self.model, step_dir / ckpt.WEIGHTS_NAME, device=self.device)
        if "raw_model" in state:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for n, v in state["raw_model"].items():
                    params[n].copy_(v.to(self.device))
            self.ema = {n: v.to(self.device) for n, v in state["ema"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.position = int(state["step"]), int(state["position"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.is_main:
            self._truncate_metrics(self.step)
            print(f"[foresight] resumed from {step_dir} at step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        # Lines logged after the checkpoint we resume from would otherwise appear twice.
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))
