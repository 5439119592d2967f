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

__all__ = ["KVCache", "CausalSelfAttention", "TransformerBlock", "CausalTransformer"]


class KVCache:
    """Preallocated per-layer keys and values ``[B, Hd, max_len, D/Hd]``; ``length`` tokens are filled.

    Tensors are allocated on the first write (so their dtype follows autocast). ``repeat_interleave`` copies a
    cache to ``n`` rows per row: a planner encodes one context once and decodes many candidate action sequences
    from copies of its cache.
    """

    def __init__(self, *, num_layers: int, max_len: int):
        self.num_layers, self.max_len = num_layers, max_len
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v ``[B, Hd, L, Dh]`` at positions ``length .. length+L-1``; return all keys/values so far."""
        start, n = self.length, k.shape[2]
        if start + n > self.max_len:
            raise ValueError(f"KVCache overflow: {start} + {n} tokens > max_len {self.max_len}")
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        self.keys[layer][:, :, start:start + n] = k
        self.values[layer][:, :, start:start + n] = v
        return self.keys[layer][:, :, :start + n], self.values[layer][:, :, :start + n]

    def advance(self, n: int) -> None:
        self.length += n

    def repeat_interleave(self, n: int) -> "KVCache":
        out = KVCache(num_layers=self.num_layers, max_len=self.max_len)
        out.length = self.length
        out.keys = [None if k is None else k.repeat_interleave(n, dim=0) for k in self.keys]
        out.values = [None if v is None else v.repeat_interleave(n, dim=0) for v in self.values]
        return out


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
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.write(layer, k, v)  # [B, Hd, P+L, Dh]
        drop = self.dropout if self.training else 0.0
        if attn_mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1, dropout_p=drop)
        elif n == 1:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # one new token sees everything cached
        else:
            # n new tokens after `past` cached ones: query i sees keys 0 .. past + i.
            mask = torch.ones(n, past + n, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
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
            keys, values = cache.write(i, k, v)  # [B, Hd, P+1, Dh]
            out = F.scaled_dot_product_attention(q, keys, values)  # [B, Hd, 1, Dh]
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
