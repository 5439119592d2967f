"""Causal transformer blocks (pre-LayerNorm, GPT style) with scaled-dot-product attention and a K/V cache.

Axis legend::

    B  batch     L  tokens in this call     P  tokens already in the cache     D  width     Hd  heads

``F.scaled_dot_product_attention`` picks the flash / memory-efficient kernels on GPU when the call allows them
(no explicit mask: ``is_causal=True`` for a full sequence, no mask for one new token with a cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KVCache", "prefix_attention", "CausalSelfAttention", "TransformerBlock", "CausalTransformer"]


class KVCache:
    """Preallocated per-layer keys and values ``[B, Hd, max_len, D/Hd]``; ``length`` tokens are filled.

    Tensors are allocated on the first write (so their dtype follows autocast). Two ways to serve many rows from
    one encoded context (a planner scoring M candidate action sequences from the same frames):

    * ``repeat_interleave(n)`` copies every row's cache to ``n`` rows;
    * ``broadcast(n)`` turns the filled part into a **shared prefix** ``[R, Hd, P, Dh]`` that every group of ``n``
      consecutive rows reads and nobody copies; new tokens go to per-row buffers of ``max_len - P`` slots. The
      attention of a query over the prefix is then one matrix product per (prefix row, head) for all ``n`` rows,
      instead of ``n`` copies of the prefix streamed from memory per step (`attend`).

    Attention goes through `attend`, which writes the new keys / values and attends over everything so far.
    """

    def __init__(self, *, num_layers: int, max_len: int):
        self.num_layers, self.max_len = num_layers, max_len
        self.keys: list[Tensor | None] = [None] * num_layers  # per-row buffers (after the prefix, if any)
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0
        self.prefix_keys: list[Tensor | None] = [None] * num_layers  # [R, Hd, P, Dh], shared by `group` rows each
        self.prefix_values: list[Tensor | None] = [None] * num_layers
        self.prefix_len = 0
        self.group = 1

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v ``[B, Hd, L, Dh]`` at positions ``length .. length+L-1``; return the per-row keys/values
        so far (all of them when there is no shared prefix; those after the prefix otherwise)."""
        start, n = self.length - self.prefix_len, k.shape[2]
        if self.length + n > self.max_len:
            raise ValueError(f"KVCache overflow: {self.length} + {n} tokens > max_len {self.max_len}")
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_len - self.prefix_len, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        self.keys[layer][:, :, start:start + n] = k
        self.values[layer][:, :, start:start + n] = v
        return self.keys[layer][:, :, :start + n], self.values[layer][:, :, :start + n]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float = 0.0) -> Tensor:
        """Write k, v ``[B, Hd, L, Dh]`` (the L new tokens) and return the causal attention of their queries q
        ``[B, Hd, L, Dh]`` over every cached token and the new ones: new token i sees tokens 0 .. past + i."""
        past, n = self.length, q.shape[2]
        keys, values = self.write(layer, k, v)
        if self.prefix_len:
            if dropout_p:
                raise ValueError("a broadcast (shared-prefix) cache is for inference: dropout_p must be 0")
            return prefix_attention(q, self.prefix_keys[layer], self.prefix_values[layer], keys, values)
        if past == 0:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=n > 1, dropout_p=dropout_p)
        if n == 1:
            return F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout_p)  # sees everything cached
        mask = torch.ones(n, past + n, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout_p)

    def advance(self, n: int) -> None:
        self.length += n

    def repeat_interleave(self, n: int) -> "KVCache":
        """A copy with every row repeated ``n`` times (``n = 1``: a plain copy). A shared prefix stays shared
        (its groups grow to ``group * n`` rows); only the per-row buffers are copied."""
        out = KVCache(num_layers=self.num_layers, max_len=self.max_len)
        out.length, out.prefix_len, out.group = self.length, self.prefix_len, self.group * n
        out.prefix_keys, out.prefix_values = list(self.prefix_keys), list(self.prefix_values)
        out.keys = [None if k is None else k.repeat_interleave(n, dim=0) for k in self.keys]
        out.values = [None if v is None else v.repeat_interleave(n, dim=0) for v in self.values]
        return out

    def broadcast(self, n: int) -> "KVCache":
        """A cache for ``n`` consecutive rows per row of this one, whose filled part is a shared prefix (read by
        each group of ``n`` rows, never copied); the new rows' tokens go to their own buffers."""
        if self.prefix_len:
            raise ValueError("broadcast: this cache already has a shared prefix (use repeat_interleave)")
        out = KVCache(num_layers=self.num_layers, max_len=self.max_len)
        out.length = out.prefix_len = self.length
        out.group = n
        out.prefix_keys = [None if k is None else k[:, :, :self.length] for k in self.keys]
        out.prefix_values = [None if v is None else v[:, :, :self.length] for v in self.values]
        return out


def _row_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal attention of q ``[M, Hd, L, Dh]`` over this row's keys k, v ``[M, Hd, Lk, Dh]`` (query i sees keys
    0 .. Lk - L + i) -> (output ``[M, Hd, L, Dh]``, log-sum-exp of the scores ``[M, Hd, L, 1]``)."""
    n, lk = q.shape[2], k.shape[2]
    if n == 1 and q.device.type == "cpu" and q.dtype == torch.float32:
        # PyTorch's fused CPU kernel (what scaled_dot_product_attention runs here) also returns the log-sum-exp
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]
        return out, lse.unsqueeze(-1)
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [M, Hd, L, Lk]
    if n > 1:
        mask = torch.ones(n, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - n)
        s = s.masked_fill(~mask, float("-inf"))
    lse = s.float().logsumexp(-1, keepdim=True)
    return torch.matmul((s.float() - lse).exp().to(v.dtype), v), lse


def prefix_attention(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of q ``[M, Hd, L, Dh]`` over a prefix shared by groups of rows plus each row's own keys.

    ``prefix_k``, ``prefix_v`` ``[R, Hd, P, Dh]`` with M = R * G: rows ``r*G .. r*G+G-1`` all see prefix row r,
    which every query sees entirely; k, v ``[M, Hd, Lk, Dh]`` the row's own later tokens, seen causally. The
    prefix part is one matrix product per (prefix row, head) over the G*L queries of its rows; the two parts are
    merged through their log-sum-exps, which is exactly softmax attention over the concatenated keys.
    """
    m, h, n, dh = q.shape
    r = prefix_k.shape[0]
    g = m // r
    if r * g != m:
        raise ValueError(f"{m} rows do not split into groups over {r} prefix rows")
    qg = q.reshape(r, g, h, n, dh).transpose(1, 2).reshape(r, h, g * n, dh)
    sp = torch.matmul(qg, prefix_k.transpose(-1, -2)).float().mul_(dh ** -0.5)  # [R, Hd, G*L, P]
    lse_p = sp.logsumexp(-1, keepdim=True)
    op = torch.matmul(sp.sub_(lse_p).exp_().to(prefix_v.dtype), prefix_v)  # [R, Hd, G*L, Dh]
    op = op.reshape(r, h, g, n, dh).transpose(1, 2).reshape(m, h, n, dh)
    lse_p = lse_p.reshape(r, h, g, n, 1).transpose(1, 2).reshape(m, h, n, 1)
    o_r, lse_r = _row_attention(q, k, v)
    lse = torch.logaddexp(lse_p, lse_r)
    return (op * (lse_p - lse).exp().to(op.dtype)).add_(o_r * (lse_r - lse).exp().to(o_r.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, *, cache: KVCache | None = None, layer: int = 0,
                attn_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [B, Hd, L, Dh] x3
        drop = self.dropout if self.training else 0.0
        if cache is not None:
            if attn_mask is not None:
                raise ValueError("attn_mask cannot be combined with a KV cache")
            out = cache.attend(layer, q, k, v, dropout_p=drop)
        elif attn_mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, dropout_p=drop)
        out = out.transpose(1, 2).reshape(b, n, d)  # [B, L, D]
        return self.proj(out)


class TransformerBlock(nn.Module):
    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 4,
                 attn_dropout: float | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim=dim, heads=heads, dropout=dropout if attn_dropout is None else attn_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor, *, cache: KVCache | None = None, layer: int = 0,
                attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), cache=cache, layer=layer, attn_mask=attn_mask)
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """A stack of causal blocks and a final LayerNorm: ``[B, L, D] -> [B, L, D]`` hidden states.

    ``dropout`` applies to the residual branches, ``attn_dropout`` (default: the same) to the attention
    probabilities. Attention dropout makes PyTorch's CPU scaled-dot-product attention fall back from the fused
    kernel to the unfused path, which materialises and masks the whole [L, L] attention matrix: on CPU with long
    code sequences that dominates a training step (3-5x slower for HARP's `quick` preset).

    With ``cache`` the L tokens continue the cached sequence and the cache advances by L. ``attn_mask``
    (bool ``[L, L]``, True = may attend) replaces the causal mask for special read-outs (no cache then).
    """

    def __init__(self, *, dim: int, layers: int, heads: int, dropout: float = 0.0, attn_dropout: float | None = None):
        super().__init__()
        self.num_layers = layers
        self.blocks = nn.ModuleList(TransformerBlock(dim=dim, heads=heads, dropout=dropout, attn_dropout=attn_dropout)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                # GPT-2: scale residual projections by depth so the residual stream does not grow with layers.
                nn.init.normal_(p, 0.0, 0.02 / (2 * layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(num_layers=self.num_layers, max_len=max_len)

    def step_weights(self) -> list[tuple]:
        """The tensors and constants `step` reads, gathered once: attribute look-ups through nn.Module (and
        nn.Sequential indexing) cost about as much as the small ops they feed. Take them anew after replacing a
        submodule; in-place weight updates (optimiser steps, ``load_state_dict``) are seen as they are."""
        layers = [(b.ln1.weight, b.ln1.bias, b.ln1.eps, b.attn.qkv.weight, b.attn.qkv.bias, b.attn.heads,
                   b.attn.proj.weight, b.attn.proj.bias, b.ln2.weight, b.ln2.bias, b.ln2.eps,
                   b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight, b.mlp[2].bias) for b in self.blocks]
        return [*layers, (self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)]

    def step(self, x: Tensor, cache: KVCache, weights: list[tuple] | None = None) -> Tensor:
        """One new token per row, inference only: ``[B, D] -> [B, D]`` hidden state; the cache advances by 1.

        The same computation as ``forward(x[:, None], cache=cache)[:, 0]`` in eval mode, written with functional
        calls on the blocks' weights (``weights`` from `step_weights`, gathered here when not given):
        autoregressive sampling runs this once per code, where the module-call and reshaping overhead of the
        general path costs more than the arithmetic of a small model.
        """
        b, d = x.shape
        weights = weights if weights is not None else self.step_weights()
        for i, layer in enumerate(weights[:-1]):
            l1w, l1b, l1e, qkv_w, qkv_b, heads, pw, pb, l2w, l2b, l2e, f1w, f1b, f2w, f2b = layer
            h = F.layer_norm(x, (d,), l1w, l1b, l1e)
            q, k, v = F.linear(h, qkv_w, qkv_b).view(b, 3, heads, 1, -1).unbind(1)
            out = cache.attend(i, q, k, v)  # [B, Hd, 1, Dh]
            x = x + F.linear(out.reshape(b, d), pw, pb)
            h = F.layer_norm(x, (d,), l2w, l2b, l2e)
            x = x + F.linear(F.gelu(F.linear(h, f1w, f1b)), f2w, f2b)
        cache.advance(1)
        fw, fb, fe = weights[-1]
        return F.layer_norm(x, (d,), fw, fb, fe)

    def forward(self, x: Tensor, *, cache: KVCache | None = None, attn_mask: Tensor | None = None) -> Tensor:
        if cache is not None and attn_mask is not None:
            raise ValueError("attn_mask cannot be combined with a KV cache")
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache, layer=i, attn_mask=attn_mask)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.ln_f(x)
