"""The K/V cache with a shared prefix: the same attention as copying the prefix to every row."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foresight.nn.transformer import CausalTransformer, KVCache, prefix_attention


@pytest.mark.parametrize("prefix_rows,group,new", [(1, 5, 1), (2, 3, 1), (1, 4, 3), (2, 2, 4)])
def test_prefix_attention_equals_attention_over_the_concatenated_keys(prefix_rows, group, new):
    torch.manual_seed(0)
    m, h, dh, p, own = prefix_rows * group, 2, 8, 6, 5  # `own` row keys, the last `new` of them new queries
    q = torch.randn(m, h, new, dh)
    pk, pv = torch.randn(prefix_rows, h, p, dh), torch.randn(prefix_rows, h, p, dh)
    k, v = torch.randn(m, h, own, dh), torch.randn(m, h, own, dh)
    full_k = torch.cat([pk.repeat_interleave(group, 0), k], dim=2)
    full_v = torch.cat([pv.repeat_interleave(group, 0), v], dim=2)
    # query i (of the `new` last tokens) sees the prefix and row keys 0 .. own - new + i
    mask = torch.ones(new, p + own, dtype=torch.bool).tril(diagonal=p + own - new)
    ref = F.scaled_dot_product_attention(q, full_k, full_v, attn_mask=mask)
    out = prefix_attention(q, pk, pv, k, v)
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)
    # the row part really is causal: changing a row key that no query may see leaves the output alone
    if new > 1:
        k2 = k.clone()
        k2[:, :, -1] += 10.0
        assert torch.allclose(prefix_attention(q[:, :, :1], pk, pv, k2[:, :, :own - new + 1], v[:, :, :own - new + 1]),
                              out[:, :, :1], atol=1e-6, rtol=1e-5)


def test_prefix_attention_rejects_rows_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="groups"):
        prefix_attention(torch.randn(5, 1, 1, 4), torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4),
                         torch.randn(5, 1, 1, 4), torch.randn(5, 1, 1, 4))


def test_broadcast_cache_steps_like_a_copied_cache():
    torch.manual_seed(0)
    tr = CausalTransformer(dim=16, layers=2, heads=2).eval()
    ctx = torch.randn(2, 4, 16)  # two distinct contexts of 4 tokens
    rows, steps = 3, 5
    with torch.inference_mode():
        base = tr.new_cache(12)
        tr(ctx, cache=base)
        copied, shared = base.repeat_interleave(rows), base.broadcast(rows)
        assert shared.prefix_len == 4 and shared.group == rows and shared.keys[0] is None  # nothing copied
        xs = torch.randn(steps, 2 * rows, 16)
        for t in range(steps):
            a, b = tr.step(xs[t], copied), tr.step(xs[t], shared)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), t
        # a multi-token continuation (the sliding-window prefill) after the prefix
        fork_c, fork_s = copied.repeat_interleave(1), shared.repeat_interleave(1)
        more = torch.randn(2 * rows, 3, 16)
        assert torch.allclose(tr(more, cache=fork_c), tr(more, cache=fork_s), atol=1e-5, rtol=1e-4)
        # the fork copied the per-row part: the original cache did not move
        assert shared.length == 4 + steps and fork_s.length == 4 + steps + 3
        assert fork_s.prefix_keys[0] is shared.prefix_keys[0]
    with pytest.raises(ValueError, match="already"):
        shared.broadcast(2)
    with torch.inference_mode(), pytest.raises(ValueError, match="overflow"):
        for _ in range(4):
            tr.step(xs[0], fork_s)


def test_broadcast_cache_refuses_dropout():
    cache = KVCache(num_layers=1, max_len=4)
    cache.write(0, torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4))
    cache.advance(2)
    shared = cache.broadcast(2)
    with pytest.raises(ValueError, match="dropout"):
        shared.attend(0, torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4), dropout_p=0.1)
