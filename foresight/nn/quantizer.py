"""Vector quantizer with an EMA codebook, data-driven initialisation and dead-code restarts.

Axis legend::

    N  vectors to quantize (all positions of all images)     K  codebook size     E  code width

Choices (VQ-VAE / VideoGPT practice, see REFERENCE.md):

* The codebook is learned by exponential moving averages of assignment counts and assigned-vector sums
  (decay 0.99) instead of a codebook loss, so the only quantizer loss is the commitment term
  ``beta * ||z_e - sg(z_q)||^2``. Beta multiplies the term that moves the ENCODER (a widely copied public
  quantizer puts it on the codebook term instead). With ``ema=False`` the codebook is a parameter trained by
  ``||sg(z_e) - z_q||^2 + beta * ||z_e - sg(z_q)||^2``.
* The codebook is initialised from encoder outputs of the first training batch (random codes start far from
  the data and most of them never win an assignment).
* A code whose EMA count falls below ``dead_threshold`` is restarted at a random encoder output of the current
  batch. Under DistributedDataParallel the counts and sums are all-reduced, and initialisation / restart
  vectors are chosen on rank 0 and broadcast, so every rank keeps the same codebook.
* A restarted code gets an EMA count that stays above ``dead_threshold`` for ``restart_grace`` steps without a
  single assignment: a count equal to the threshold would fall below it after one batch that missed the code,
  so a rare code would be restarted again and again before it could attract any data.
* A step's vectors are quantized with the codebook their nearest codes were chosen from (the codebook before
  this step's EMA update and restarts, as in VideoGPT and Sonnet's VQ-VAE-EMA): a code restarted this step
  already holds an unrelated encoder output, so looking it up would hand the decoder a vector the assignment
  never saw.
* Distances and EMA statistics are computed in float32 even under bf16 autocast (autocast is switched off for
  them: under autocast a float32 matmul still runs in bf16, whose 8-bit mantissa picks wrong nearest codes and
  lets the EMA sums drift).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VectorQuantizer"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(x: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(x)
    return x


def _broadcast(x: Tensor) -> Tensor:
    if _distributed():
        dist.broadcast(x, src=0)
    return x


def _float32(device: torch.device):
    """A block whose matmuls run in the dtype of their inputs (float32 here), whatever autocast is active."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know has no autocast to switch off
        return contextlib.nullcontext()


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization of channel vectors with a straight-through gradient.

    forward(z: [B, E, h, w]) -> (z_q [B, E, h, w] (straight-through), codes [B, h, w] int64, commit_loss scalar,
    stats dict with 'perplexity' and 'dead_codes'). EMA updates, initialisation and restarts happen only in
    training mode with gradients enabled (i.e. inside a training step).
    """

    def __init__(self, *, num_codes: int, code_dim: int, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, eps: float = 1e-5, dead_threshold: float = 1.0, restart_grace: int = 10,
                 init_from_data: bool = True):
        super().__init__()
        if restart_grace < 0:
            raise ValueError(f"restart_grace: expected steps >= 0, got {restart_grace}")
        self.num_codes, self.code_dim = num_codes, code_dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.dead_threshold = dead_threshold
        self.restart_grace = restart_grace  # steps a restarted code survives without any assignment
        init = torch.randn(num_codes, code_dim) / code_dim**0.5
        if ema:
            self.register_buffer("codebook", init.clone())
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # 1 once the codebook holds encoder outputs; saved, so a resumed run does not re-initialise.
        self.register_buffer("initialized", torch.tensor(0 if init_from_data else 1, dtype=torch.uint8))

    # ------------------------------------------------------------------ lookup
    def nearest(self, flat: Tensor) -> Tensor:
        """flat [N, E] -> code indices [N] (squared Euclidean distance, float32 even under autocast)."""
        with _float32(flat.device):
            flat, cb = flat.float(), self.codebook.float()
            dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]  # [N, K]
            return dist2.argmin(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [...] int64 -> code vectors [..., E] (float32)."""
        return F.embedding(codes, self.codebook.float())

    def codes_to_latent(self, codes: Tensor) -> Tensor:
        """codes [B, h, w] -> quantized latent [B, E, h, w] (input of the decoder)."""
        return self.lookup(codes).permute(0, 3, 1, 2).contiguous()

    # ------------------------------------------------------------------ training-time codebook maintenance
    def _sample_vectors(self, flat: Tensor, n: int) -> Tensor:
        # n random encoder outputs (with replacement when the batch is small), chosen on rank 0.
        idx = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        return _broadcast(flat[idx].contiguous())

    @torch.no_grad()
    def _init_codebook(self, flat: Tensor) -> None:
        vectors = self._sample_vectors(flat, self.num_codes)  # [K, E]
        self.codebook.data.copy_(vectors)
        if self.ema:
            self.ema_sum.copy_(vectors)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(1)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor) -> None:
        with _float32(flat.device):
            flat = flat.float()
            onehot = F.one_hot(codes, self.num_codes).float()  # [N, K]
            count = _all_reduce(onehot.sum(0))  # [K]
            total = _all_reduce(onehot.t() @ flat)  # [K, E]
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    def restart_count(self) -> float:
        """EMA count given to a restarted code: after ``restart_grace`` steps without an assignment it is still
        above ``dead_threshold`` (by a factor decay**-0.5), one step later it is below."""
        if self.decay <= 0 or self.decay >= 1:  # the count is this batch's count (0) or never decays (1)
            return max(self.dead_threshold, 1.0)
        return self.dead_threshold * self.decay ** -(self.restart_grace + 0.5)

    @torch.no_grad()
    def restart_dead_codes(self, flat: Tensor) -> int:
        """Move codes with EMA count < dead_threshold onto random encoder outputs; returns how many moved."""
        dead = self.ema_count < self.dead_threshold  # identical on every rank (counts are all-reduced)
        n_dead = int(dead.sum())
        if n_dead:
            vectors = self._sample_vectors(flat, n_dead).float()
            count = self.restart_count()
            self.codebook[dead] = vectors
            self.ema_sum[dead] = vectors * count  # codebook = ema_sum / ema_count keeps the code where it was put
            self.ema_count[dead] = count
        return n_dead

    # ------------------------------------------------------------------ forward
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        if z.ndim != 4 or z.shape[1] != self.code_dim:
            raise ValueError(f"VectorQuantizer expects [B, {self.code_dim}, h, w], got {list(z.shape)}")
        b, e, h, w = z.shape
        z32 = z.float()
        flat = z32.permute(0, 2, 3, 1).reshape(-1, e)  # [N, E]
        updating = self.training and torch.is_grad_enabled()
        if updating and not bool(self.initialized):
            self._init_codebook(flat.detach())
        codes = self.nearest(flat.detach())  # [N]
        # Look the codes up in the codebook they were chosen from, before the EMA update and restarts below
        # change it in place (F.embedding copies the rows, so the update does not reach z_q).
        z_q = self.lookup(codes)  # [N, E]
        stats: dict[str, float] = {}
        if updating and self.ema:
            self._ema_update(flat.detach(), codes)
            # dead_codes counts codes below threshold after this step's EMA update; they are restarted now.
            stats["dead_codes"] = float(self.restart_dead_codes(flat.detach()))
        with _float32(z.device):
            commit = F.mse_loss(flat, z_q.detach())
            loss = self.beta * commit  # beta on the encoder's (commitment) term
            if not self.ema:
                loss = loss + F.mse_loss(z_q, flat.detach())
        z_q = flat + (z_q - flat).detach()  # straight-through: forward = z_q, gradient = identity to z_e
        z_q = z_q.view(b, h, w, e).permute(0, 3, 1, 2).to(z.dtype)  # [B, E, h, w]
        with torch.no_grad():
            usage = torch.bincount(codes, minlength=self.num_codes).float()
            usage = _all_reduce(usage)
            p = usage / usage.sum().clamp_min(1)
            stats["perplexity"] = float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))
            stats["used_codes"] = float((usage > 0).sum())
        return z_q, codes.view(b, h, w), loss, stats
