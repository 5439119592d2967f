"""HARP stage 2: a causal transformer over the raster-scan codes of a clip, with action embeddings.

Axis legend::

    B  batch      T  frames in the window (context C + future)      N = h * w  codes per frame
    L  slots      D  width                                         K  codebook size      A  action dim

Sequence layout. A window of T frames is flattened frame by frame, each frame in raster order, into T*N codes.
Slot p (0 <= p < T*N) PREDICTS code p; its input is

    content(code p-1)  (a learned start vector for p = 0)
  + pos(p)             learned spatio-temporal embedding: time[frame(p)] + row[i(p)] + col[j(p)]
  + act(frame(p))      HARP App. A.3: a linear map of the action that leads INTO frame(p), i.e. the embedding
                       of the action for step t+1 is added to every token embedding used to predict frame t+1

where content(code) = tok_emb(code), plus, for the C context frames, a ResNet feature map of the context frame
at that code's position (VideoGPT / HARP condition on ResNet features of the context frames). Context frames
carry no action embedding (at prediction time only the future actions are known), so their keys / values do
not depend on the candidate actions and one context cache serves every candidate. The loss is the
cross-entropy of the future frames' codes only; context codes are conditioning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foresight.models.harp.config import HarpConfig
from foresight.nn.conv import ResNetFeatures
from foresight.nn.transformer import CausalTransformer, KVCache

__all__ = ["CodeTransformer"]


class CodeTransformer(nn.Module):
    def __init__(self, config: HarpConfig):
        super().__init__()
        self.config = config
        d, g = config.width, config.grid
        self.codes_per_frame = g * g
        self.max_frames = config.context_frames + config.future_frames
        self.tok_emb = nn.Embedding(config.codebook_size, d)
        self.start = nn.Parameter(torch.zeros(d))
        # one extra time row: the feature read-out of the last frame sits at the first slot of frame T
        self.time_emb = nn.Parameter(torch.randn(self.max_frames + 1, d) * 0.02)
        self.row_emb = nn.Parameter(torch.randn(g, d) * 0.02)
        self.col_emb = nn.Parameter(torch.randn(g, d) * 0.02)
        self.action_proj = nn.Linear(config.action_dim, d) if config.action_dim > 0 else None
        self.context_net = None
        if config.context_resnet:
            self.context_net = ResNetFeatures(widths=tuple(config.resnet_widths), blocks=tuple(config.resnet_blocks),
                                              downsample=config.downsample, out_channels=d)
            nn.init.zeros_(self.context_net.out.weight)  # starts as "codes only"; learns what to add
            nn.init.zeros_(self.context_net.out.bias)
        self.transformer = CausalTransformer(dim=d, layers=config.layers, heads=config.heads, dropout=config.dropout,
                                             attn_dropout=config.attn_dropout)
        self.head = nn.Linear(d, config.codebook_size, bias=False)
        nn.init.normal_(self.tok_emb.weight, 0.0, 0.02)
        nn.init.normal_(self.head.weight, 0.0, 0.02)

    # ------------------------------------------------------------------ embeddings
    def pos(self, slots: Tensor) -> Tensor:
        """slot indices [L] -> position embeddings [L, D]."""
        n, g = self.codes_per_frame, self.config.grid
        frame, cell = slots // n, slots % n
        return self.time_emb[frame] + self.row_emb[cell // g] + self.col_emb[cell % g]

    def content(self, codes: Tensor, context_frames: Tensor | None) -> Tensor:
        """codes [B, T, h, w] (+ context pixels [B, C', 3, H, W], C' <= T) -> content embeddings [B, T*N, D]."""
        b, t = codes.shape[:2]
        x = self.tok_emb(codes.flatten(1))  # [B, T*N, D]
        if self.context_net is not None:
            if context_frames is None:
                raise ValueError("this HARP model conditions on ResNet features of the context frames: pass them")
            c = min(context_frames.shape[1], t)
            feat = self.context_net(context_frames[:, :c].flatten(0, 1))  # [B*C', D, h, w]
            feat = feat.flatten(2).transpose(1, 2).reshape(b, c * self.codes_per_frame, -1)  # [B, C'*N, D]
            x = torch.cat([x[:, :feat.shape[1]] + feat.to(x.dtype), x[:, feat.shape[1]:]], dim=1)
        return x

    def frame_actions(self, actions: Tensor | None, frames: int, first_future: int) -> Tensor | None:
        """Per-frame action embeddings [B, frames, D] for window frames; frame f >= first_future gets
        ``actions[:, f - first_future]`` (the action that leads into it), earlier frames get zeros."""
        if self.action_proj is None or actions is None:
            return None
        emb = self.action_proj(actions[:, :frames - first_future])  # [B, F', D]
        if emb.shape[1] < frames - first_future:
            raise ValueError(f"need {frames - first_future} actions for the future frames, got {actions.shape[1]}")
        pad = emb.new_zeros(emb.shape[0], first_future, emb.shape[2])
        return torch.cat([pad, emb], dim=1)  # [B, frames, D]

    def slot_inputs(self, prev_content: Tensor, start: int, frame_act: Tensor | None) -> Tensor:
        """Inputs of slots start .. start+L-1 given the content of the codes before them [B, L, D]."""
        slots = torch.arange(start, start + prev_content.shape[1], device=prev_content.device)
        x = prev_content + self.pos(slots).to(prev_content.dtype)
        if frame_act is not None:
            x = x + frame_act[:, slots // self.codes_per_frame]  # [B, L, D]
        return x

    def shifted(self, content: Tensor) -> Tensor:
        """[B, L, D] content of codes 0..L-1 -> [B, L, D] content of 'previous code' for slots 0..L-1."""
        start = self.start.to(content.dtype).expand(content.shape[0], 1, -1)
        return torch.cat([start, content[:, :-1]], dim=1)

    # ------------------------------------------------------------------ full-sequence forward (training)
    def forward(self, codes: Tensor, context_frames: Tensor | None, actions: Tensor | None) -> Tensor:
        """Logits [B, F*N, K] for the future codes of a window.

        codes [B, C+F, h, w]; context_frames [B, C, 3, H, W] (when context_resnet); actions [B, >=F, A] the
        future actions (actions[:, 0] leads from the last context frame to the first future frame).
        """
        c, t = self.config.context_frames, codes.shape[1]
        content = self.content(codes, context_frames)  # [B, T*N, D]
        x = self.slot_inputs(self.shifted(content), 0, self.frame_actions(actions, t, c))
        h = self.transformer(x)  # [B, T*N, D]
        return self.head(h[:, c * self.codes_per_frame:])  # [B, F*N, K]

    def loss(self, codes: Tensor, context_frames: Tensor | None, actions: Tensor | None) -> Tensor:
        logits = self.forward(codes, context_frames, actions)
        target = codes[:, self.config.context_frames:].flatten(1)  # [B, F*N]
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    # ------------------------------------------------------------------ cached stepping (sampling)
    def prefill(self, content: Tensor, frame_act: Tensor | None, cache: KVCache) -> Tensor:
        """Run slots ``cache.length .. cache.length+L-1`` whose previous-code contents are ``content``
        [B, L, D]; returns their logits [B, L, K] and advances the cache."""
        x = self.slot_inputs(content, cache.length, frame_act)
        return self.head(self.transformer(x, cache=cache))

    def step(self, prev_content: Tensor, slot_emb: Tensor, cache: KVCache,
             weights: list[tuple] | None = None) -> Tensor:
        """One slot at ``cache.length`` (inference): previous code's content [B, D] + that slot's position (and
        action) embedding ``slot_emb`` ([D] or [B, D]) -> logits [B, K]; the cache advances by one. ``weights``:
        ``self.transformer.step_weights()``, gathered once per sampling call."""
        return F.linear(self.transformer.step(prev_content + slot_emb, cache, weights), self.head.weight)

    # ------------------------------------------------------------------ per-frame features (policy heads)
    def frame_features(self, codes: Tensor, context_frames: Tensor | None, actions: Tensor | None) -> Tensor:
        """Causal per-frame features [B, T, D] of a window of T <= C+F frames.

        Feature t is the final hidden state of a READ-OUT query placed at the first slot of frame t+1: its input
        is content(last code of frame t) + pos(first slot of frame t+1) with NO action embedding, and it attends
        to every slot up to and including the last code of frame t. So it has seen all N codes of frames <= t
        and the actions < t (actions enter through the slots of frames they lead into), never action t or any
        later frame. For an action-free model it equals the hidden state of slot (t+1)*N of the normal pass.
        actions [B, T-1 (or more), A], actions[:, t] leading from frame t to t+1 (only those into future frames,
        index >= C-1, are used, as in training); None adds no action embeddings.
        """
        b, t = codes.shape[:2]
        n, c = self.codes_per_frame, self.config.context_frames
        if t > self.max_frames:
            raise ValueError(f"features: at most context_frames + future_frames = {self.max_frames} frames, got {t}")
        content = self.content(codes, context_frames)  # [B, T*N, D]
        future_actions = actions[:, c - 1:] if (actions is not None and t > c) else None
        frame_act = self.frame_actions(future_actions, t, c) if future_actions is not None else None
        main = self.slot_inputs(self.shifted(content), 0, frame_act)  # [B, T*N, D]
        ends = torch.arange(1, t + 1, device=codes.device) * n  # first slot of frame t+1
        readout = content[:, ends - 1] + self.pos(ends).to(content.dtype)  # [B, T, D]
        total = t * n + t
        q = torch.arange(total, device=codes.device)
        # main slot p sees slots <= p; read-out r sees main slots < ends[r] and itself
        limit = torch.cat([torch.arange(t * n, device=codes.device), ends - 1])  # last main slot each query sees
        mask = torch.arange(t * n, device=codes.device)[None, :] <= limit[:, None]  # [total, T*N]
        self_mask = q[:, None] == q[None, t * n:]  # [total, T]: a read-out sees itself
        mask = torch.cat([mask, self_mask], dim=1)  # [total, total]
        h = self.transformer(torch.cat([main, readout], dim=1), attn_mask=mask)
        return h[:, t * n:]  # [B, T, D]
