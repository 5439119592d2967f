"""Tiny synthetic data for tests, examples and smoke runs: a square pushed around by its actions.

``SyntheticClips`` needs no simulator and no files, yet it is a real action-conditioned prediction problem:
the square at step t+1 sits where ``actions[t, :2]`` moved it, so a model that ignores actions cannot fit it.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticClips(Dataset):
    """Clips of a white square moving on a dark background, driven by the actions.

    Items are dicts in the library's clip convention: ``frames [C+F, 3, H, W]`` float in [0, 1],
    ``actions [C+F-1, A]`` float in [-1, 1]. Item ``i`` is a fixed function of ``(seed, i)``; with
    ``augment_shift > 0`` a random translation (from torch's global RNG, as real augmentation would) is added.
    """

    def __init__(self, num_clips: int = 64, *, context_frames: int = 1, future_frames: int = 3,
                 image_size: int = 16, action_dim: int = 4, square: int = 4, seed: int = 0,
                 augment_shift: int = 0):
        if action_dim < 2:
            raise ValueError(f"action_dim: expected >= 2 (x, y moves), got {action_dim}")
        self.num_clips, self.context_frames, self.future_frames = num_clips, context_frames, future_frames
        self.image_size, self.action_dim, self.square, self.seed = image_size, action_dim, square, seed
        self.augment_shift = augment_shift

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range [0, {self.num_clips})")
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        length = self.context_frames + self.future_frames
        size, sq = self.image_size, self.square
        actions = torch.rand(length - 1, self.action_dim, generator=g) * 2 - 1  # [T-1, A]
        pos = torch.rand(2, generator=g) * (size - sq)
        step = max(1.0, size / 8)
        frames = torch.full((length, 3, size, size), 0.1)
        colour = torch.tensor([0.9, 0.8, 0.3])
        for t in range(length):
            if t > 0:
                pos = (pos + actions[t - 1, :2] * step).clamp(0, size - sq)
            y, x = int(pos[0].round()), int(pos[1].round())
            frames[t, :, y:y + sq, x:x + sq] = colour[:, None, None]
        if self.augment_shift > 0:
            dy, dx = torch.randint(-self.augment_shift, self.augment_shift + 1, (2,)).tolist()
            frames = torch.roll(frames, shifts=(dy, dx), dims=(-2, -1))
        return {"frames": frames, "actions": actions}


def fit_stage(model, stage: str, data: dict, *, steps: int, lr: float, batch_size: int = 16,
              seed: int = 1) -> list[float]:
    """Train ``stage`` of ``model`` on in-memory tensors ``data`` (``{key: [N, ...]}``) with plain AdamW for
    ``steps`` steps of random batches (seeded); returns the losses. For tests that need a briefly trained tiny
    model without a Trainer run directory."""
    model.set_stage(stage).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n = next(iter(data.values())).shape[0]
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        loss, _ = model({k: v[idx] for k, v in data.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
