"""Video VQ-VAE priors: a spatio-temporal PixelCNN over the top latents and a per-slice PixelCNN over the bottom
latents conditioned on the top ones, both action-conditioned.

Axis legend::

    B  batch (clips, or clips x time slices for the bottom prior)     D  width     Dc  conditioning width
    L  top steps in a window (context steps first)   tc  context top steps   h, w  codes per side of a slice
    K  codebook size     Ca  action vector of one latent step (its dt actions concatenated)     E  embedding width

Order. Codes are generated time slice by time slice and, inside a slice, in raster order (row by row, left to
right), as in the seed (Sec. 3.2). Causality is built from two pieces:

* `MaskedConv3d`: a ``[kt, k, k]`` kernel padded on the past side in time; its ``kt - 1`` past time taps are
  whole (those slices are complete), its current-slice tap is the PixelCNN raster mask: rows above, and in the
  own row the cells to the left (type "A", the input layer) or also the centre (type "B", every later layer).
  With ``kt = 1`` it is the 2D masked convolution of the bottom prior.
* `CausalAttention3d`: multi-head self-attention over the flattened ``(t, h, w)`` sequence with the causal mask
  (every ``attention_every`` gated blocks, as the seed's attention every five layers). It also covers the
  up-and-right blind spot of stacked masked convolutions.
After the type-A input layer the features at a position depend on the codes strictly before it, and type-B
convolutions and causal attention keep that, so the logit at a position never sees its own or a later code
(tested: changing a later code, in time or in raster order, leaves every earlier logit bit-identical).

Gated blocks (conditional PixelCNN, van den Oord et al. 2016): ``x + W_o (tanh(f) * sigmoid(g))`` with
``[f, g] = masked_conv(x) + V c + U a``, where ``c`` is a spatial conditioning map (1x1 conv, broadcast over
time) and ``a`` the action vector of the time slice (linear map, broadcast over space). The actions therefore
enter as a per-time-step bias in every gated masked-conv layer (the seed is action-free; this is ours).

Conditioning:

* Top prior: the top latent of a window (``tc`` context steps, then the future steps) is a known prefix (no
  loss on the context steps, whose action vectors are 0 because only future actions are known when planning),
  plus the seed's context stack (App. Table 6): embeddings of the context's top codes and of its bottom codes
  (space-to-depth to the top grid), time folded into channels, a conv and residual blocks -> ``c``.
* Bottom prior: one time slice n of the bottom latent is a 2D image; ``c`` is a conditioning stack over the top
  codes of the ``bottom_top_window`` top steps ending at the one that covers slice n (upsampled to the bottom
  grid), the ``bottom_bottom_window`` bottom slices before n, and a learned embedding of n's position inside
  its top step. The seed's stack reads a window of top steps around n; ours reads none after n's own top step,
  so a top step and its bottom slices can be sampled before the next top step (needed to slide the window of a
  long rollout, whose context then is predicted steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.models.harp.sampling import top_k_sample
from foresight.models.video_vqvae.config import VideoVQVAEConfig
from foresight.models.videogpt.vqvae import AxialPositions
from foresight.nn.conv import ResBlock
from foresight.nn.transformer import CausalSelfAttention

__all__ = ["MaskedConv3d", "GatedBlock", "CausalAttention3d", "PixelCNN", "TopPrior", "BottomPrior",
           "sample_slice"]


class MaskedConv3d(nn.Conv3d):
    """Conv3d over ``[B, Cin, T, h, w]`` -> ``[B, Cout, T, h, w]``, causal in time and in raster order."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel: int, time_kernel: int, mask_type: str):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(in_channels, out_channels, (time_kernel, kernel, kernel))
        c = kernel // 2
        mask = torch.ones(time_kernel, kernel, kernel)
        mask[-1, c, c + (mask_type == "B"):] = 0  # current slice, own row: the centre (A) and cells to its right
        mask[-1, c + 1:] = 0  # current slice: rows below
        self.register_buffer("mask", mask, persistent=False)
        self.pad = (c, c, c, c, time_kernel - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


class GatedBlock(nn.Module):
    """``x + drop(W_o (tanh(f) * sigmoid(g)))``, ``[f, g] = masked_conv_B(x) + V cond + U action``."""

    def __init__(self, *, width: int, kernel: int, time_kernel: int, cond_dim: int, action_dim: int,
                 dropout: float):
        super().__init__()
        self.conv = MaskedConv3d(width, 2 * width, kernel=kernel, time_kernel=time_kernel, mask_type="B")
        self.cond = nn.Conv2d(cond_dim, 2 * width, 1) if cond_dim > 0 else None
        self.action = nn.Linear(action_dim, 2 * width) if action_dim > 0 else None
        self.out = nn.Conv3d(width, width, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cond: Tensor | None, actions: Tensor | None) -> Tensor:
        h = self.conv(x)  # [B, 2D, T, h, w]
        if cond is not None and self.cond is not None:
            h = h + self.cond(cond)[:, :, None]  # [B or 1, 2D, 1, h, w]: the same map for every time slice
        if actions is not None and self.action is not None:
            h = h + self.action(actions).transpose(1, 2)[..., None, None]  # [B, 2D, T, 1, 1]
        f, g = h.chunk(2, dim=1)
        return x + self.drop(self.out(torch.tanh(f) * torch.sigmoid(g)))


class CausalAttention3d(nn.Module):
    """Pre-norm residual self-attention over the flattened (t, h, w) positions of ``[B, D, T, h, w]``, causal."""

    def __init__(self, *, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(dim=width, heads=heads)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, d, t, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # [B, T*h*w, D] in (t, h, w) order: the generation order
        out = self.drop(self.attn(self.norm(seq)))
        return x + out.transpose(1, 2).reshape(b, d, t, h, w)


class PixelCNN(nn.Module):
    """Codes ``[B, T, h, w]`` -> logits ``[B, K, T, h, w]``; the logit at a position sees only earlier codes.

    ``cond [B or 1, Dc, h, w]`` (broadcast over time and, with batch 1, over the batch) and ``actions
    [B, T, Ca]`` enter every gated block. Learned (t, h, w) positions are added to the code embeddings (the
    attention needs them; masked convolutions are translation invariant).
    """

    def __init__(self, *, codebook_size: int, width: int, layers: int, kernel: int, time_kernel: int,
                 attention_every: int, heads: int, dropout: float, cond_dim: int, action_dim: int, steps: int,
                 grid: int):
        super().__init__()
        self.embed = nn.Embedding(codebook_size, width)
        self.positions = AxialPositions(steps=steps, grid=grid, channels=width)
        self.input = MaskedConv3d(width, width, kernel=kernel, time_kernel=time_kernel, mask_type="A")
        self.blocks = nn.ModuleList(GatedBlock(width=width, kernel=kernel, time_kernel=time_kernel,
                                               cond_dim=cond_dim, action_dim=action_dim, dropout=dropout)
                                    for _ in range(layers))
        self.attention = nn.ModuleDict({
            str(i): CausalAttention3d(width=width, heads=heads, dropout=dropout)
            for i in range(layers) if attention_every > 0 and (i + 1) % attention_every == 0})
        self.head = nn.Conv3d(width, codebook_size, 1)

    def forward(self, codes: Tensor, cond: Tensor | None = None, actions: Tensor | None = None) -> Tensor:
        t = codes.shape[1]
        x = self.embed(codes) + self.positions(t).to(self.embed.weight.dtype)  # [B, T, h, w, D]
        x = self.input(x.permute(0, 4, 1, 2, 3))  # [B, D, T, h, w]
        for i, block in enumerate(self.blocks):
            x = block(x, cond, actions)
            if str(i) in self.attention:
                x = self.attention[str(i)](x)
        return self.head(F.relu(x))  # [B, K, T, h, w]


def _embed_window(embedding: nn.Embedding, codes: Tensor, valid: Tensor) -> Tensor:
    """codes [N, W, h, w] with valid [N, W] -> [N, W * E, h, w]; invalid (before the clip) entries are 0."""
    e = embedding(codes) * valid[:, :, None, None, None].to(embedding.weight.dtype)  # [N, W, h, w, E]
    return e.permute(0, 1, 4, 2, 3).flatten(1, 2)


class TopPrior(nn.Module):
    """The 3D PixelCNN over a window of top steps, conditioned on the context's codes and on the actions."""

    def __init__(self, config: VideoVQVAEConfig):
        super().__init__()
        self.config = config
        cfg, e, dc = config, config.code_dim, config.top_cond_width
        self.context_steps = cfg.context_top_steps
        self.action_dim = cfg.frames_per_top_step * cfg.action_dim  # Ca: the actions of a top step's frames
        # context stack (seed App. Table 6): context top + bottom codes -> a [Dc, ht, wt] map
        self.ctx_top = nn.Embedding(cfg.codebook_size, e)
        self.ctx_bottom = nn.Embedding(cfg.codebook_size, e)
        self.ctx_bottom_in = nn.Conv2d(cfg.context_bottom_steps * e, dc, cfg.top_space_downsample,
                                       stride=cfg.top_space_downsample)  # space-to-depth onto the top grid
        self.ctx_top_in = nn.Conv2d(cfg.context_top_steps * e, dc, 3, padding=1)
        self.ctx_blocks = nn.Sequential(*(ResBlock(in_channels=dc) for _ in range(cfg.top_cond_blocks)))
        self.pixelcnn = PixelCNN(codebook_size=cfg.codebook_size, width=cfg.top_width, layers=cfg.top_layers,
                                 kernel=cfg.top_kernel, time_kernel=cfg.top_time_kernel,
                                 attention_every=cfg.top_attention_every, heads=cfg.top_heads,
                                 dropout=cfg.top_dropout, cond_dim=dc, action_dim=self.action_dim,
                                 steps=cfg.top_window, grid=cfg.top_grid)

    def condition(self, context_top: Tensor, context_bottom: Tensor) -> Tensor:
        """Context codes: top [B, tc, ht, wt], bottom [B, tc * rt, hb, wb] -> conditioning map [B, Dc, ht, wt]."""
        cfg = self.config
        if context_top.shape[1] != cfg.context_top_steps or context_bottom.shape[1] != cfg.context_bottom_steps:
            raise ValueError(f"expected {cfg.context_top_steps} top and {cfg.context_bottom_steps} bottom context "
                             f"steps, got {list(context_top.shape)} and {list(context_bottom.shape)}")
        top = self.ctx_top(context_top).permute(0, 1, 4, 2, 3).flatten(1, 2)  # [B, tc*E, ht, wt]
        bottom = self.ctx_bottom(context_bottom).permute(0, 1, 4, 2, 3).flatten(1, 2)  # [B, tcb*E, hb, wb]
        return self.ctx_blocks(self.ctx_top_in(top) + self.ctx_bottom_in(bottom))

    def window_actions(self, future_actions: Tensor | None, length: int) -> Tensor | None:
        """Action vectors of the future steps of a window [B, >= L - tc, Ca] -> of all L window steps (context: 0)."""
        if future_actions is None or self.action_dim == 0:
            return None
        tc = self.context_steps
        future = future_actions[:, :length - tc]
        if future.shape[1] != length - tc:
            raise ValueError(f"{length - tc} future top steps need as many action vectors, got "
                             f"{list(future_actions.shape)}")
        return torch.cat([future.new_zeros(future.shape[0], tc, future.shape[2]), future], dim=1)

    def run(self, window: Tensor, cond: Tensor, window_actions: Tensor | None) -> Tensor:
        """Window codes [B, L, ht, wt] -> logits [B, K, L, ht, wt] (``cond`` from `condition`)."""
        return self.pixelcnn(window, cond, window_actions)

    def forward(self, top: Tensor, context_bottom: Tensor, future_actions: Tensor | None) -> Tensor:
        """Teacher forcing: window codes [B, L, ht, wt] (context steps first), the context's bottom codes
        [B, tc * rt, hb, wb] and the future steps' action vectors [B, >= L - tc, Ca] -> logits of the future
        steps [B, K, L - tc, ht, wt]."""
        tc, length = self.context_steps, top.shape[1]
        if not tc < length <= self.config.top_window:
            raise ValueError(f"expected a window of {tc + 1} .. {self.config.top_window} top steps, "
                             f"got {list(top.shape)}")
        cond = self.condition(top[:, :tc], context_bottom)
        return self.run(top, cond, self.window_actions(future_actions, length))[:, :, tc:]


class BottomPrior(nn.Module):
    """The per-slice 2D PixelCNN over bottom codes, conditioned on top codes, past bottom slices and actions."""

    def __init__(self, config: VideoVQVAEConfig):
        super().__init__()
        self.config = config
        cfg, e, dc = config, config.code_dim, config.bottom_cond_width
        self.action_dim = cfg.time_downsample * cfg.action_dim  # Ca: the actions of a bottom step's frames
        self.top_emb = nn.Embedding(cfg.codebook_size, e)
        self.bottom_emb = nn.Embedding(cfg.codebook_size, e)
        self.top_in = nn.Conv2d(cfg.bottom_top_window * e, dc, 3, padding=1)
        self.bottom_in = (nn.Conv2d(cfg.bottom_bottom_window * e, dc, 3, padding=1)
                          if cfg.bottom_bottom_window > 0 else None)
        self.offset = nn.Embedding(cfg.top_time_downsample, dc)  # which bottom step of its top step a slice is
        self.blocks = nn.Sequential(*(ResBlock(in_channels=dc) for _ in range(cfg.bottom_cond_blocks)))
        self.pixelcnn = PixelCNN(codebook_size=cfg.codebook_size, width=cfg.bottom_width, layers=cfg.bottom_layers,
                                 kernel=cfg.bottom_kernel, time_kernel=1, attention_every=cfg.bottom_attention_every,
                                 heads=cfg.bottom_heads, dropout=cfg.bottom_dropout, cond_dim=dc,
                                 action_dim=self.action_dim, steps=1, grid=cfg.bottom_grid)

    def condition(self, top: Tensor, bottom: Tensor, slices: Tensor) -> Tensor:
        """Conditioning maps [B * n, Dc, hb, wb] (clip-major) of bottom slices ``slices`` [n] (clip step indices).

        top [B, Tt, ht, wt] must hold the top steps up to ``slices // rt``; bottom [B, Tb, hb, wb] the slices
        before each of ``slices`` (later entries are not read)."""
        cfg = self.config
        b = top.shape[0]
        own = slices // cfg.top_time_downsample  # [n] the top step covering each slice
        t_idx = own[:, None] - torch.arange(cfg.bottom_top_window - 1, -1, -1, device=slices.device)  # [n, Wt]
        if int(own.max()) >= top.shape[1]:
            raise ValueError(f"bottom slice {int(slices.max())} needs top step {int(own.max())}, the top codes "
                             f"have {top.shape[1]} steps")
        top_w = top[:, t_idx.clamp_min(0)].flatten(0, 1)  # [B*n, Wt, ht, wt]
        top_valid = (t_idx >= 0).expand(b, -1, -1).flatten(0, 1)  # [B*n, Wt]
        x = self.top_in(F.interpolate(_embed_window(self.top_emb, top_w, top_valid),
                                      scale_factor=cfg.top_space_downsample, mode="nearest"))  # [B*n, Dc, hb, wb]
        if self.bottom_in is not None:
            b_idx = slices[:, None] - torch.arange(cfg.bottom_bottom_window, 0, -1, device=slices.device)  # [n, Wb]
            bottom_w = bottom[:, b_idx.clamp_min(0)].flatten(0, 1)  # [B*n, Wb, hb, wb]
            bottom_valid = (b_idx >= 0).expand(b, -1, -1).flatten(0, 1)
            x = x + self.bottom_in(_embed_window(self.bottom_emb, bottom_w, bottom_valid))
        x = x + self.offset(slices % cfg.top_time_downsample).repeat(b, 1)[:, :, None, None]
        return self.blocks(x)

    def run(self, slice_codes: Tensor, cond: Tensor, slice_actions: Tensor | None) -> Tensor:
        """Codes of one slice per row [N, hb, wb], cond [N, Dc, hb, wb], actions [N, Ca] -> logits [N, K, hb, wb]."""
        acts = slice_actions[:, None] if slice_actions is not None and self.action_dim else None
        return self.pixelcnn(slice_codes[:, None], cond, acts)[:, :, 0]

    def forward(self, top: Tensor, bottom: Tensor, slices: Tensor, slice_actions: Tensor | None) -> Tensor:
        """Teacher forcing: logits [B, n, K, hb, wb] of the bottom slices ``slices`` [n] of every clip.

        top [B, Tt, ht, wt], bottom [B, Tb, hb, wb] codes of whole clips; slice_actions [B, n, Ca] the action vector
        of each of those slices (None: action-free)."""
        b, n = bottom.shape[0], slices.shape[0]
        cond = self.condition(top, bottom, slices)
        acts = slice_actions.flatten(0, 1) if slice_actions is not None else None
        logits = self.run(bottom[:, slices].flatten(0, 1), cond, acts)  # [B*n, K, hb, wb]
        return logits.unflatten(0, (b, n))


def sample_slice(logits_of, codes: Tensor, *, top_k: int, temperature: float,
                 generator: torch.Generator | None) -> None:
    """Fill ``codes [M, h, w]`` in place, position by position in raster order.

    ``logits_of()`` -> logits ``[M, K, h, w]`` of the slice given the codes written so far (it must read
    ``codes``, e.g. through a view into the window tensor). One full network pass per position: a PixelCNN
    without an activation cache."""
    _, h, w = codes.shape
    for i in range(h):
        for j in range(w):
            logits = logits_of()[:, :, i, j]  # [M, K]
            codes[:, i, j] = top_k_sample(logits, top_k=top_k, temperature=temperature, generator=generator)
