"""VectorQuantizer: straight-through gradient, beta placement, EMA update, data init, dead-code restarts."""

import torch

from foresight.nn.quantizer import VectorQuantizer


def _grid(vectors: torch.Tensor) -> torch.Tensor:
    # [N, E] -> [1, E, 1, N] (a 1 x N "image")
    return vectors.t()[None, :, None, :].contiguous()


def test_straight_through_gradient_is_identity_and_forward_is_codebook():
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=8, code_dim=4, init_from_data=False).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, codes, _, _ = q(z)
    expected = q.codebook[codes].permute(0, 3, 1, 2)
    assert torch.allclose(z_q, expected, atol=1e-6)
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    assert torch.allclose(z.grad, w)  # gradient passes straight through to the encoder output


def test_beta_is_on_the_commitment_term():
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=4, code_dim=2, beta=0.25, ema=False, init_from_data=False).train()
    z = torch.randn(1, 2, 1, 5, requires_grad=True)
    _, codes, loss, _ = q(z)
    loss.backward()
    flat = z.detach()[0, :, 0].t()  # [5, 2]
    zq = q.codebook.detach()[codes.view(-1)]
    n = flat.numel()
    enc_grad = 0.25 * 2 * (flat - zq) / n  # beta * d/dz ||z - sg(zq)||^2
    assert torch.allclose(z.grad[0, :, 0].t(), enc_grad, atol=1e-6)
    cb_grad = torch.zeros_like(q.codebook)
    cb_grad.index_add_(0, codes.view(-1), 2 * (zq - flat) / n)  # weight 1 on the codebook term
    assert torch.allclose(q.codebook.grad, cb_grad, atol=1e-6)


def test_ema_update_moves_code_towards_assigned_mean():
    q = VectorQuantizer(num_codes=2, code_dim=2, decay=0.9, eps=0.0, dead_threshold=0.0, init_from_data=False).train()
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    q.ema_sum.copy_(q.codebook)
    q.ema_count.fill_(1.0)
    data = torch.tensor([[1.0, 1.0], [1.0, 3.0], [9.0, 9.0]])  # two to code 0, one to code 1
    with torch.enable_grad():
        q(_grid(data).requires_grad_())
    count0 = 0.9 * 1 + 0.1 * 2
    sum0 = 0.9 * torch.tensor([0.0, 0.0]) + 0.1 * torch.tensor([2.0, 4.0])
    assert torch.allclose(q.ema_count[0], torch.tensor(count0))
    assert torch.allclose(q.codebook[0], sum0 / count0, atol=1e-5)
    assert torch.allclose(q.codebook[1], (0.9 * torch.tensor([10.0, 10.0]) + 0.1 * torch.tensor([9.0, 9.0])) / 1.0)


def test_no_update_in_eval_or_without_grad():
    q = VectorQuantizer(num_codes=4, code_dim=2, init_from_data=False)
    before = q.codebook.clone()
    q.eval()
    q(torch.randn(1, 2, 2, 2))
    q.train()
    with torch.no_grad():
        q(torch.randn(1, 2, 2, 2))
    assert torch.equal(q.codebook, before)


def test_codebook_initialised_from_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=6, code_dim=3, decay=1.0, dead_threshold=0.0).train()
    data = torch.randn(20, 3) + 5.0
    q(_grid(data).requires_grad_())
    assert int(q.initialized) == 1
    d = torch.cdist(q.codebook, data)  # every code sits on a data vector
    assert float(d.min(dim=1).values.max()) < 1e-5


def test_dead_codes_restart_on_encoder_outputs_and_stats():
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=4, code_dim=2, decay=0.5, dead_threshold=0.5, init_from_data=False).train()
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
    q.ema_sum.copy_(q.codebook)
    data = torch.randn(16, 2) * 0.1  # all near code 0: codes 1..3 are never used
    _, _, _, stats = q(_grid(data).requires_grad_())  # counts of codes 1..3 fall to 0.5 (not yet dead)
    assert stats["dead_codes"] == 0
    _, _, _, stats = q(_grid(data).requires_grad_())  # 0.25 < 0.5: restarted
    assert stats["dead_codes"] == 3
    d = torch.cdist(q.codebook[1:], data)
    assert float(d.min(dim=1).values.max()) < 1e-5  # restarted codes sit on encoder outputs
    assert torch.all(q.ema_count[1:] == q.restart_count()) and q.restart_count() > q.dead_threshold
    assert 1.0 <= stats["perplexity"] <= 4.0


def test_vectors_of_a_code_restarted_this_step_keep_the_code_they_were_assigned():
    # Code 1 wins one vector but its EMA count still falls below the threshold, so it is restarted in the same
    # step on some other encoder output. That vector must be quantized to the code it was assigned (the
    # codebook its nearest code was chosen from), not to the unrelated restart vector.
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=2, code_dim=2, decay=0.5, dead_threshold=1.0, init_from_data=False).train()
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    q.ema_sum.copy_(q.codebook)
    q.ema_count.copy_(torch.tensor([20.0, 0.1]))  # code 1: 0.5 * 0.1 + 0.5 * 1 = 0.55 < 1 -> restarted
    before = q.codebook.clone()
    data = torch.cat([torch.randn(15, 2) * 0.1, torch.tensor([[100.5, 99.5]])])
    z_q, codes, loss, stats = q(_grid(data).requires_grad_())
    assert stats["dead_codes"] == 1 and codes.view(-1)[15] == 1
    assert not torch.equal(q.codebook[1], before[1])  # code 1 was moved ...
    flat_q = z_q.detach()[0, :, 0].t()  # [16, 2]
    assert torch.equal(flat_q, before[codes.view(-1)])  # ... but this step's vectors use the code they chose
    expected = 0.25 * torch.mean((data - before[codes.view(-1)]) ** 2)
    assert torch.allclose(loss, expected)  # commitment towards the assigned code, not the restart vector


def test_restarted_code_survives_batches_that_miss_it():
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=2, code_dim=2, decay=0.9, dead_threshold=1.0, init_from_data=False).train()
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    q.ema_sum.copy_(q.codebook)
    q.ema_count.copy_(torch.tensor([20.0, 0.5]))
    _, _, _, stats = q(_grid(torch.randn(8, 2) * 0.1).requires_grad_())
    assert stats["dead_codes"] == 1  # 0.9 * 0.5 < 1: restarted (on one of these vectors)
    restarts = []
    for _ in range(11):
        at_code0 = q.codebook[0].expand(8, 2).clone()  # a batch that all goes to code 0: code 1 wins nothing
        _, codes, _, stats = q(_grid(at_code0).requires_grad_())
        assert torch.all(codes == 0)
        restarts.append(stats["dead_codes"])
    # Alive for the 10 grace batches that miss it, restarted on the 11th (not after the first miss).
    assert restarts == [0] * 10 + [1] and q.restart_grace == 10


def test_distances_and_ema_run_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    codebook = torch.randn(64, 8) * 0.05 + 3.0  # codes close together far from 0: bf16 cannot tell them apart
    flat = torch.randn(512, 8) * 0.05 + 3.0

    def run(autocast: bool):
        q = VectorQuantizer(num_codes=64, code_dim=8, dead_threshold=0.0, init_from_data=False).train()
        q.codebook.copy_(codebook)
        q.ema_sum.copy_(codebook)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            nearest = q.nearest(flat)
            z_q, codes, loss, _ = q(_grid(flat).requires_grad_())
        return nearest, z_q, codes, loss, q

    n32, zq32, c32, l32, q32 = run(False)
    n16, zq16, c16, l16, q16 = run(True)
    assert torch.equal(n16, n32) and torch.equal(c16, c32)
    assert zq16.dtype == torch.float32 and torch.equal(zq16, zq32)
    assert l16.dtype == torch.float32 and torch.allclose(l16, l32, rtol=1e-6, atol=0)
    assert torch.allclose(q16.ema_sum, q32.ema_sum, rtol=1e-6, atol=0)
    assert torch.allclose(q16.codebook, q32.codebook, rtol=1e-6, atol=0)
