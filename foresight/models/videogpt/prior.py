"""VideoGPT stage 2: a GPT over the flattened latent grid, conditioned on the context and the actions.

Axis legend::

    B  batch      S  samples      M = B * S rows decoded together      T'  latent steps in the window
    N = h * w  codes per latent step      L  slots in a call      D  width      K  codebook size
    Nc  conditioning tokens      Ca = dt * A  action vector of one latent step      Hd  heads

Sequence. The latent grid of a window (``C/dt`` context steps, then future steps) is flattened in (t, h, w)
order. Slot p predicts code p; its input is the embedding of code p-1 (a learned start vector for p = 0) plus a
learned position ``time[t(p)] + row[i(p)] + col[j(p)]``. The context steps are a known PREFIX (their codes come
from the causal encoder, see vqvae.py); the loss is the cross-entropy of the future codes only.

Conditioning, as in the seed (Sec. 3):

* Cross-attention: the C context frames go through a small ResNet (`foresight.nn.conv.ResNetFeatures`, 2D and
  per frame, GroupNorm; the seed used a 3D ResNet) whose feature maps, with a learned frame / row / column
  position, are the ``Nc`` tokens every block cross-attends to. Their keys and values are computed once per
  sampling call.
* Conditional LayerNorm for the actions: every LayerNorm of the prior has ``gain = 1 + W_g a`` and
  ``bias = W_b a`` where ``a`` is the action vector of the latent step of the code the slot predicts: the
  CONCATENATION of the ``dt`` actions leading into that step's frames (order kept; an average would lose which
  action came first). Context slots get a = 0 (only future actions are known when predicting), so their keys
  and values are the same for every candidate action sequence: one context cache serves all candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.models.harp.sampling import top_k_sample
from foresight.models.videogpt.config import VideoGPTConfig
from foresight.nn.conv import ResNetFeatures
from foresight.nn.transformer import CausalSelfAttention, KVCache

__all__ = ["ConditionalLayerNorm", "CrossAttention", "PriorBlock", "LatentPrior", "sample_future_codes"]

Memory = list[tuple[Tensor, Tensor]]  # per block: cross-attention keys, values [B, Hd, Nc, Dh]


class ConditionalLayerNorm(nn.Module):
    """LayerNorm whose gain and bias are affine in a conditioning vector: ``LN(x) * (1 + W_g c) + W_b c``.

    The biases of the two maps are the unconditional gain offset and bias. ``cond=None`` means c = 0 (exactly
    the biases). ``cond_dim=0``: a plain LayerNorm.
    """

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=cond_dim == 0)
        self.gain = nn.Linear(cond_dim, dim) if cond_dim > 0 else None
        self.shift = nn.Linear(cond_dim, dim) if cond_dim > 0 else None

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        h = self.norm(x)  # [B, L, D]
        if self.gain is None:
            return h
        if cond is None:
            return h * (1 + self.gain.bias) + self.shift.bias
        return h * (1 + self.gain(cond)) + self.shift(cond)  # cond [B, L, Ca] (or [B, 1, Ca], broadcast)


class CrossAttention(nn.Module):
    """Queries from the sequence, keys / values from the conditioning tokens (computed once by ``memory``)."""

    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def memory(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, Nc, D] -> keys, values [B, Hd, Nc, Dh]."""
        b, n, d = tokens.shape
        k, v = self.kv(tokens).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor]) -> Tensor:
        b, n, d = x.shape
        k, v = memory
        if k.shape[0] != b:  # one context shared by all rows: a stride-0 view, no copy
            k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, Hd, L, Dh]
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class PriorBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the context, MLP; every norm conditional."""

    def __init__(self, config: VideoGPTConfig, cond_dim: int):
        super().__init__()
        d = config.width
        self.ln1 = ConditionalLayerNorm(d, cond_dim)
        self.attn = CausalSelfAttention(dim=d, heads=config.heads, dropout=config.attn_dropout)
        self.ln2 = ConditionalLayerNorm(d, cond_dim)
        self.cross = CrossAttention(dim=d, heads=config.heads, dropout=config.attn_dropout)
        self.ln3 = ConditionalLayerNorm(d, cond_dim)
        self.mlp = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cond: Tensor | None, memory: tuple[Tensor, Tensor], *,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x, cond), cache=cache, layer=layer))
        x = x + self.drop(self.cross(self.ln2(x, cond), memory))
        return x + self.drop(self.mlp(self.ln3(x, cond)))


class LatentPrior(nn.Module):
    def __init__(self, config: VideoGPTConfig):
        super().__init__()
        self.config = config
        d, g = config.width, config.grid
        self.codes_per_step = g * g
        self.max_steps = config.latent_steps
        self.cond_dim = config.time_downsample * config.action_dim  # Ca (0: action-free)
        self.tok_emb = nn.Embedding(config.codebook_size, d)
        self.start = nn.Parameter(torch.zeros(d))
        self.time_emb = nn.Parameter(torch.randn(self.max_steps, d) * 0.02)
        self.row_emb = nn.Parameter(torch.randn(g, d) * 0.02)
        self.col_emb = nn.Parameter(torch.randn(g, d) * 0.02)
        # conditioning encoder: ResNet feature maps of the context frames -> cross-attention tokens
        gc = config.image_size // config.cond_downsample
        self.cond_net = ResNetFeatures(widths=tuple(config.cond_widths), blocks=tuple(config.cond_blocks),
                                       downsample=config.cond_downsample, out_channels=d)
        self.cond_frame = nn.Parameter(torch.randn(config.context_frames, d) * 0.02)
        self.cond_row = nn.Parameter(torch.randn(gc, d) * 0.02)
        self.cond_col = nn.Parameter(torch.randn(gc, d) * 0.02)
        self.cond_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(PriorBlock(config, self.cond_dim) for _ in range(config.layers))
        self.ln_f = ConditionalLayerNorm(d, self.cond_dim)
        self.head = nn.Linear(d, config.codebook_size, bias=False)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("cond_net"):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.blocks.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / (2 * config.layers) ** 0.5)  # GPT-2 residual scaling
        nn.init.normal_(self.tok_emb.weight, 0.0, 0.02)

    # ------------------------------------------------------------------ embeddings and conditions
    def pos(self, slots: Tensor) -> Tensor:
        """slot indices [L] -> position embeddings [L, D]."""
        n, g = self.codes_per_step, self.config.grid
        step, cell = slots // n, slots % n
        return self.time_emb[step] + self.row_emb[cell // g] + self.col_emb[cell % g]

    def memory(self, context_frames: Tensor) -> Memory:
        """context frames [B, C, 3, H, W] in [0, 1] -> per block cross-attention keys / values."""
        b, c = context_frames.shape[:2]
        if c != self.config.context_frames:
            raise ValueError(f"the prior conditions on {self.config.context_frames} context frames, got {c}")
        feat = self.cond_net(context_frames.flatten(0, 1))  # [B*C, D, gc, gc]
        feat = feat.flatten(2).transpose(1, 2).unflatten(0, (b, c))  # [B, C, gc*gc, D]
        pos = self.cond_frame[:, None] + (self.cond_row[:, None] + self.cond_col[None]).flatten(0, 1)[None]
        tokens = self.cond_norm((feat + pos.to(feat.dtype)).flatten(1, 2))  # [B, C*gc*gc, D]
        return [block.cross.memory(tokens) for block in self.blocks]

    def window_conditions(self, step_actions: Tensor | None, context_steps: int) -> Tensor | None:
        """Action vectors of the future steps [B, L', Ca] -> of every window step [B, Tc' + L', Ca] (context: 0)."""
        if step_actions is None or self.cond_dim == 0:
            return None
        pad = step_actions.new_zeros(step_actions.shape[0], context_steps, step_actions.shape[2])
        return torch.cat([pad, step_actions], dim=1)

    def slot_conditions(self, window_cond: Tensor | None, start: int, length: int) -> Tensor | None:
        """[B, T', Ca] per window step -> [B, L, Ca] for slots start .. start+L-1 (the step of the code predicted)."""
        if window_cond is None:
            return None
        steps = torch.arange(start, start + length, device=window_cond.device) // self.codes_per_step
        return window_cond[:, steps]

    def inputs(self, prev_content: Tensor, start: int) -> Tensor:
        """Inputs of slots start .. start+L-1 from the embeddings of the codes before them [B, L, D]."""
        slots = torch.arange(start, start + prev_content.shape[1], device=prev_content.device)
        return prev_content + self.pos(slots).to(prev_content.dtype)

    def shifted(self, content: Tensor) -> Tensor:
        """Embeddings of codes 0..L-1 [B, L, D] -> 'previous code' embeddings of slots 0..L-1."""
        start = self.start.to(content.dtype).expand(content.shape[0], 1, -1)
        return torch.cat([start, content[:, :-1]], dim=1)

    # ------------------------------------------------------------------ transformer
    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(num_layers=len(self.blocks), max_len=max_len)

    def run(self, x: Tensor, cond: Tensor | None, memory: Memory, cache: KVCache | None = None) -> Tensor:
        """Slot inputs [B, L, D] (continuing ``cache`` when given) -> logits [B, L, K]; the cache advances by L."""
        for i, block in enumerate(self.blocks):
            x = block(x, cond, memory[i], cache=cache, layer=i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.head(self.ln_f(x, cond))

    def forward(self, codes: Tensor, context_frames: Tensor, step_actions: Tensor | None) -> Tensor:
        """Logits [B, F'*N, K] of the future codes of a window (teacher forcing).

        codes [B, Tc' + F', h, w] (context steps first); context_frames [B, C, 3, H, W]; step_actions
        [B, >= F', Ca] the action vectors of the future steps (None for an action-free model).
        """
        tc, t, n = self.config.context_steps, codes.shape[1], self.codes_per_step
        if t > self.max_steps or t <= tc:
            raise ValueError(f"expected codes of {tc + 1} .. {self.max_steps} latent steps, got {list(codes.shape)}")
        content = self.tok_emb(codes.flatten(1))  # [B, T'*N, D]
        window_cond = None
        if step_actions is not None and self.cond_dim:
            window_cond = self.window_conditions(step_actions[:, :t - tc], tc)  # [B, T', Ca]
        x = self.inputs(self.shifted(content), 0)
        logits = self.run(x, self.slot_conditions(window_cond, 0, t * n), self.memory(context_frames))
        return logits[:, tc * n:]  # [B, F'*N, K]


def _all_same(x: Tensor) -> bool:
    return x.shape[0] == 1 or x.stride(0) == 0 or bool((x == x[:1]).all())


def sample_future_codes(prior: LatentPrior, context_codes: Tensor, context_frames: Tensor,
                        step_actions: Tensor | None, *, steps: int, num_samples: int = 1, top_k: int = 0,
                        temperature: float = 1.0, generator: torch.Generator | None = None,
                        use_cache: bool = True, share_context: bool = True) -> Tensor:
    """Sample the codes of ``steps`` future latent steps.

    Args:
        context_codes: [B, Tc', h, w] codes of the context steps (the encoder's, see vqvae.py).
        context_frames: [B, C, 3, H, W] context pixels (for the conditioning encoder).
        step_actions: [B, >= steps, Ca] action vector of every future latent step (None: action-free).
    Returns:
        codes [B, S, steps, h, w].

    * One code per call with a preallocated K/V cache; ``use_cache=False`` recomputes the whole window for every
      code (the same logits up to float rounding, kept for the exactness test).
    * A shared context (every row equal, e.g. a planner's one context expanded over N candidates) is encoded
      once: the conditioning ResNet, the cross-attention keys / values and the context slots run for ONE row;
      the cross-attention keys / values are broadcast, and the context slots' self-attention keys / values are
      a prefix shared by the ``B * S`` rows (`KVCache.broadcast`; ``share_context=False`` copies them instead,
      same codes).
    * More steps than ``future_frames / dt`` (HARP App. A.2, in latent steps): keep the context steps, feed the
      last ``F' - 1`` sampled steps as the window's first future steps and sample the next; repeat. The context
      part of the cache is reused; the ``F' - 1`` steps re-run in one parallel pass per extra step.
    """
    with torch.inference_mode():  # cheaper per op than no_grad: sampling runs many small ops per code
        out = _sample(prior, context_codes, context_frames, step_actions, steps=steps, num_samples=num_samples,
                      top_k=top_k, temperature=temperature, generator=generator, use_cache=use_cache,
                      share_context=share_context)
    return out.clone()  # a normal tensor again: inference tensors cannot be saved for backward or edited in place


def _sample(prior: LatentPrior, context_codes: Tensor, context_frames: Tensor, step_actions: Tensor | None, *,
            steps: int, num_samples: int, top_k: int, temperature: float, generator: torch.Generator | None,
            use_cache: bool, share_context: bool = True) -> Tensor:
    cfg = prior.config
    b, tc, n, lf, g = context_codes.shape[0], cfg.context_steps, prior.codes_per_step, cfg.future_steps, cfg.grid
    s = num_samples
    m = b * s
    rows = 1 if (_all_same(context_codes) and _all_same(context_frames)) else b
    memory = prior.memory(context_frames[:rows])  # [rows, Hd, Nc, Dh] per block
    mem_m = memory if rows == 1 else [(k.repeat_interleave(s, 0), v.repeat_interleave(s, 0)) for k, v in memory]
    ctx_tokens = context_codes[:rows].flatten(1).repeat_interleave(m // rows, dim=0)  # [M, Tc'*N]
    acts = step_actions.repeat_interleave(s, dim=0) if step_actions is not None and prior.cond_dim else None
    max_len = (tc + lf) * n

    ctx_cache = None
    if use_cache:  # the context slots, once per distinct context, with a = 0 (shared by every candidate)
        ctx_cache = prior.new_cache(max_len)
        ctx_content = prior.tok_emb(context_codes[:rows].flatten(1))  # [rows, Tc'*N, D]
        prior.run(prior.inputs(prior.shifted(ctx_content), 0), None, memory, cache=ctx_cache)
        ctx_cache = ctx_cache.broadcast(m // rows) if share_context else ctx_cache.repeat_interleave(m // rows)

    future: list[Tensor] = []  # each [M, N]
    for k in range(steps):
        first = max(0, k - lf + 1)  # future step at window step Tc'
        wstep = tc + k - first  # window step being sampled
        window_cond = prior.window_conditions(acts[:, first:k + 1], tc) if acts is not None else None
        if k == 0 or k >= lf:
            # a new window (the first one, or a slide): context + future steps first .. k-1. Otherwise the
            # window keeps growing and the running cache / known codes are reused.
            known = torch.cat([ctx_tokens, *future[first:k]], dim=1)  # [M, wstep*N]
            if use_cache:
                cache = ctx_cache.repeat_interleave(1)  # a copy (of the per-row part): the context stays clean
                if k > first:
                    prev = prior.tok_emb(known[:, tc * n - 1:-1])  # codes before slots Tc'*N .. wstep*N - 1
                    prior.run(prior.inputs(prev, tc * n), prior.slot_conditions(window_cond, tc * n, prev.shape[1]),
                              mem_m, cache=cache)
            prev_tok = known[:, -1]  # the last known code (a context code, or the last code of step k-1)
        codes = []
        for j in range(n):
            slot = wstep * n + j
            if use_cache:
                x = prior.inputs(prior.tok_emb(prev_tok)[:, None], slot)  # [M, 1, D]
                logits = prior.run(x, prior.slot_conditions(window_cond, slot, 1), mem_m, cache=cache)[:, -1]
            else:  # everything recomputed from the codes so far: slots 0 .. slot
                start = prior.start.expand(m, 1, -1)
                x = prior.inputs(torch.cat([start, prior.tok_emb(known)], dim=1), 0)  # [M, slot+1, D]
                logits = prior.run(x, prior.slot_conditions(window_cond, 0, slot + 1), mem_m)[:, -1]
            tok = top_k_sample(logits, top_k=top_k, temperature=temperature, generator=generator)  # [M]
            if not use_cache:
                known = torch.cat([known, tok[:, None]], dim=1)
            prev_tok = tok
            codes.append(tok)
        future.append(torch.stack(codes, dim=1))  # [M, N]
    out = torch.stack(future, dim=1)  # [M, steps, N]
    return out.view(b, s, steps, g, g)
