"""Autoregressive sampling of future frame codes: top-k, temperature, K/V cache, batched candidates, sliding.

Axis legend: B inputs, S samples per input, M = B * S rows decoded together, T future frames, N codes per
frame, D width, K codebook size.

* One new code per transformer call, with a preallocated K/V cache (``use_cache=False`` recomputes the whole
  window for every code; same logits, kept for the exactness test and the speed benchmark).
* Context encoded once: when all B contexts are the same image sequence (a planner scoring B candidate action
  sequences), the context's slots run for ONE row. Their keys / values are a prefix SHARED by the M rows
  (`KVCache.broadcast`): attention over it is one matrix product for all rows rather than M copies streamed
  from memory per code (``share_context=False`` copies it to every row instead; the same codes, kept for the
  equality test and the benchmark).
* Rollouts longer than ``future_frames``, HARP App. A.2: keep the context frames, feed the last F-1 predicted
  frames as the first future frames of the window and predict the next one; repeat. The context part of the cache
  is reused; only the F-1 frames are re-run (in one parallel pass) per extra frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from foresight.models.harp.transformer import CodeTransformer
from foresight.nn.transformer import KVCache

__all__ = ["top_k_sample", "sample_codes"]


def top_k_sample(logits: Tensor, *, top_k: int, temperature: float, generator: torch.Generator | None) -> Tensor:
    """logits [M, K] -> sampled indices [M]; top_k <= 0 samples from the full distribution."""
    logits = logits.float()
    if temperature != 1.0:  # dividing by 1 changes nothing but costs an op per code
        logits = logits / max(temperature, 1e-6)
    if 0 < top_k < logits.shape[-1]:
        values, idx = logits.topk(top_k, dim=-1)  # [M, k]
        choice = torch.multinomial(values.softmax(-1), 1, generator=generator)  # [M, 1]
        return idx.gather(1, choice)[:, 0]
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _all_same(x: Tensor | None) -> bool:
    return x is None or x.shape[0] == 1 or bool((x == x[:1]).all())


class _Window:
    """Steps one slot at a time, through a cache or by recomputing the window (``cache is None``)."""

    def __init__(self, tr: CodeTransformer, known: Tensor, frame_act: Tensor | None, cache: KVCache | None,
                 pos_table: Tensor | None):
        self.tr, self.frame_act, self.cache = tr, frame_act, cache
        self.pos_table = pos_table  # [L_max, D] position embeddings of every window slot (cached path)
        self.known = known  # [M, L, D] contents of all codes so far (needed only without cache)
        self.length = known.shape[1]
        self.slot_emb: Tensor | None = None  # [N, D] or [M, N, D]: the frame being sampled (cached path)
        self.weights = tr.transformer.step_weights() if cache is not None else None

    def begin_frame(self) -> None:
        """Before the N slots of a new frame (cached path): their position (+ action) embeddings, summed once
        per frame rather than once per code."""
        if self.cache is None:
            return
        n = self.tr.codes_per_frame
        first = self.cache.length
        emb = self.pos_table[first:first + n]  # [N, D]
        if self.frame_act is not None:
            emb = emb + self.frame_act[:, first // n, None]  # [M, N, D]
        self.slot_emb = emb

    def step(self, prev_content: Tensor, cell: int) -> Tensor:
        """prev_content [M, D] = content of code ``length-1`` -> logits [M, K] of code ``length``, which is
        cell ``cell`` of the current frame."""
        tr = self.tr
        if self.cache is not None:
            logits = tr.step(prev_content, self.slot_emb[..., cell, :], self.cache, self.weights)
        else:  # everything recomputed from the contents so far
            start = tr.start.to(self.known.dtype).expand(self.known.shape[0], 1, -1)
            x = tr.slot_inputs(torch.cat([start, self.known], dim=1), 0, self.frame_act)  # slots 0..length
            logits = tr.head(tr.transformer(x)[:, -1])
        return logits

    def push(self, content: Tensor) -> None:
        if self.cache is None:
            self.known = torch.cat([self.known, content[:, None]], dim=1)
        self.length += 1


def sample_codes(tr: CodeTransformer, context_codes: Tensor, context_frames: Tensor | None, actions: Tensor | None,
                 *, horizon: int, num_samples: int = 1, top_k: int = 10, temperature: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 share_context: bool = True) -> Tensor:
    """Sample future codes.

    Args:
        context_codes: [B, C, h, w] codes of the context frames.
        context_frames: [B, C, 3, H, W] pixels of the context frames (when the model uses ResNet context features).
        actions: [B, T, A] future actions (None for action-free models).
    Returns:
        codes [B, S, T, h, w].
    """
    with torch.inference_mode():  # cheaper per op than no_grad: sampling runs ~50 small ops per code
        out = _sample_codes(tr, context_codes, context_frames, actions, horizon=horizon, num_samples=num_samples,
                            top_k=top_k, temperature=temperature, generator=generator, use_cache=use_cache,
                            share_context=share_context)
    return out.clone()  # a normal tensor again: inference tensors cannot be saved for backward or edited in place


def _sample_codes(tr: CodeTransformer, context_codes: Tensor, context_frames: Tensor | None, actions: Tensor | None,
                  *, horizon: int, num_samples: int, top_k: int, temperature: float,
                  generator: torch.Generator | None, use_cache: bool, share_context: bool = True) -> Tensor:
    cfg = tr.config
    b, c, g = context_codes.shape[0], cfg.context_frames, cfg.grid
    n, f, s = tr.codes_per_frame, cfg.future_frames, num_samples
    m = b * s
    shared = _all_same(context_codes) and _all_same(context_frames)
    rows = 1 if shared else b
    ctx_content = tr.content(context_codes[:rows], None if context_frames is None else context_frames[:rows])
    ctx_content = ctx_content.repeat_interleave(m // rows, dim=0)  # [M, C*N, D]
    acts = actions.repeat_interleave(s, dim=0) if actions is not None else None  # [M, T, A]
    max_len = (c + f) * n

    ctx_cache = pos_table = None
    if use_cache:
        pos_table = tr.pos(torch.arange(max_len, device=ctx_content.device)).to(ctx_content.dtype)  # [L_max, D]
        # context slots run once per distinct context (no action embeddings there), then shared by (or copied
        # to) the m // rows rows of that context
        ctx_cache = tr.transformer.new_cache(max_len)
        tr.prefill(tr.shifted(ctx_content[::m // rows]), None, ctx_cache)
        ctx_cache = ctx_cache.broadcast(m // rows) if share_context else ctx_cache.repeat_interleave(m // rows)

    frames: list[Tensor] = []  # each [M, N]
    for step in range(horizon):
        first = max(0, step - f + 1)  # real future index of window frame C
        window_acts = tr.frame_actions(acts[:, first:step + 1], c + step - first + 1, c) if acts is not None else None
        if step == 0 or step >= f:
            # a new window (the first one, or a slide): context + frames first .. step-1. Otherwise the window
            # keeps growing and the running cache / known contents are reused.
            prior = frames[first:step]
            prior_content = (tr.tok_emb(torch.cat(prior, 1)) if prior
                             else ctx_content.new_zeros(m, 0, ctx_content.shape[2]))  # [M, (step-first)*N, D]
            # repeat_interleave(1) copies the per-row part (the shared prefix stays shared)
            cache = ctx_cache.repeat_interleave(1) if use_cache else None
            window = _Window(tr, torch.cat([ctx_content, prior_content], dim=1), window_acts, cache, pos_table)
            if use_cache and prior:
                prev = torch.cat([ctx_content[:, -1:], prior_content[:, :-1]], dim=1)
                tr.prefill(prev, window_acts, cache)
            prev_content = (prior_content if prior else ctx_content)[:, -1]  # [M, D]
        window.frame_act = window_acts
        window.begin_frame()
        codes = []
        for j in range(n):
            logits = window.step(prev_content, j)
            tok = top_k_sample(logits, top_k=top_k, temperature=temperature, generator=generator)
            prev_content = torch.nn.functional.embedding(tok, tr.tok_emb.weight)  # [M, D] (no module call per code)
            window.push(prev_content)
            codes.append(tok)
        frames.append(torch.stack(codes, dim=1))  # [M, N]
    out = torch.stack(frames, dim=1)  # [M, T, N]
    return out.view(b, s, horizon, g, g)
