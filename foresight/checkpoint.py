"""Atomic checkpoint I/O: model directories (config.json + model.safetensors + stats.json) and training state.

Layout of a run (see DESIGN.md)::

    runs/<experiment>/<name>/checkpoints/<step:09d>/config.json          {"type": ..., "config": {...}}
                                                   /model.safetensors
                                                   /stats.json          (optional data statistics)
                                                   /training_state/     optimizer, scheduler, RNG, data position
    runs/<experiment>/<name>/checkpoints/last -> <step:09d>

Every directory is written under a temporary name beside its final place and renamed into place, so a run
killed mid-save leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATS_NAME = "stats.json"
TRAINING_STATE_DIR = "training_state"
LAST_LINK = "last"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt; the message names the file."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same folder, same suffix, so writers that pick a format from the
    extension still work); when the block succeeds the file is fsynced and renamed onto ``path``, when it fails
    the temporary file is removed and ``path`` is untouched. The one way this project writes a file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces ``path`` as a whole (the old one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        trash = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_json(path: str | Path, *, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing {what}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt {what}: {path} is not valid JSON ({e})") from e


# safetensors metadata key of the SHA-256 over the stored tensors (see `weights_checksum`).
CHECKSUM_KEY = "foresight.sha256"


def weights_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over name, dtype, shape and raw bytes of each tensor, in name order.

    safetensors checks the header (names, dtypes, offsets) but not the tensor bytes, so a flipped bit in the
    data loads silently; this digest, stored in the file's metadata, catches it.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unique_tensors(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with tied tensors stored once (safetensors refuses shared storage): returns the tensors
    to write and {dropped name: kept name}, which goes into the metadata as `safetensors.torch.save_model`
    does. `safetensors.torch.load_model` restores tied tensors from the kept name."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in sorted(module.state_dict().items()):
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().contiguous()
        # A view of part of a larger storage is written as its own copy (safetensors refuses overlaps).
        tensors[name] = t.clone() if t.untyped_storage().nbytes() != t.nbytes else t
    return tensors, aliases


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Write a module's parameters and buffers as safetensors (tied/shared tensors handled), with a checksum
    of the tensor data in the metadata (verified by `load_weights`)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors, aliases = _unique_tensors(module)
    metadata = {**aliases, CHECKSUM_KEY: weights_checksum(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def verify_weights(path: str | Path) -> None:
    """Check the tensor data of a safetensors file against the checksum in its metadata; files written before
    checksums were stored (no such key) pass unchecked. Raises CheckpointError naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:  # parses the header: catches truncation / garbage
            expected = (f.metadata() or {}).get(CHECKSUM_KEY)
            if expected is None:
                return
            actual = weights_checksum({k: f.get_tensor(k) for k in f.keys()})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt weights file {path}: {e}") from e
    if actual != expected:
        raise CheckpointError(
            f"corrupt weights file {path}: the tensor data does not match the checksum stored when it was saved "
            f"(sha256 {actual[:16]}... vs {expected[:16]}...); the file was damaged or edited after saving")


def load_weights(module: torch.nn.Module, path: str | Path, *, device: str | torch.device = "cpu") -> None:
    """Load safetensors weights into ``module`` strictly; missing/corrupt files raise CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file: {path} does not exist")
    verify_weights(path)
    try:
        missing, unexpected = load_model(module, str(path), strict=False, device=str(device))
    except RuntimeError as e:
        raise CheckpointError(f"weights file {path} does not match the model: {e}") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt weights file {path}: {e}") from e
    if missing or unexpected:
        raise CheckpointError(
            f"weights file {path} does not match the model: missing keys {sorted(missing)[:10]}, "
            f"unexpected keys {sorted(unexpected)[:10]}"
        )


def step_dir_name(step: int) -> str:
    return f"{step:09d}"


def update_last_link(checkpoints_dir: str | Path, step_dir: str | Path) -> None:
    """Point ``checkpoints/last`` at ``step_dir`` atomically (a relative symlink)."""
    checkpoints_dir = Path(checkpoints_dir)
    link = checkpoints_dir / LAST_LINK
    tmp = checkpoints_dir / f".{LAST_LINK}.{uuid.uuid4().hex}.tmp"
    os.symlink(Path(step_dir).name, tmp)
    os.replace(tmp, link)
    _fsync_dir(checkpoints_dir)


def resolve_checkpoint(path: str | Path) -> Path:
    """Find the model directory behind ``path``: a model dir, a ``checkpoints`` dir, or a run dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} does not exist")
    for candidate in (path, path / LAST_LINK, path / "checkpoints" / LAST_LINK):
        if (candidate / CONFIG_NAME).is_file():
            return candidate.resolve()
    raise CheckpointError(
        f"no checkpoint at {path}: expected {CONFIG_NAME} (+ {WEIGHTS_NAME}) in it, "
        f"or a '{LAST_LINK}' link to a checkpoint directory"
    )


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete step directories under ``checkpoints_dir``, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    steps = [p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.is_symlink()]
    return sorted(steps, key=lambda p: int(p.name))
