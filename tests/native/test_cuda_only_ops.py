"""Operators with a CUDA kernel and no CPU one: host forms with CUDA's semantics, or a clear error."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matmuls_with_out_dtype_widen_to_float(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 5, generator=g).to(dtype), torch.randn(5, 3, generator=g).to(dtype)
    c = torch.randn(4, 3, generator=g).to(dtype)
    ba, bb = torch.randn(2, 4, 5, generator=g).to(dtype), torch.randn(2, 5, 3, generator=g).to(dtype)
    bc = torch.randn(2, 4, 3, generator=g).to(dtype)
    f = torch.float32
    cases = [
        (torch.mm(a.cuda(), b.cuda(), out_dtype=f), a.float() @ b.float()),
        (torch.bmm(ba.cuda(), bb.cuda(), out_dtype=f), torch.bmm(ba.float(), bb.float())),
        (torch.addmm(c.cuda(), a.cuda(), b.cuda(), out_dtype=f, beta=0.5, alpha=2),
         torch.addmm(c.float(), a.float(), b.float(), beta=0.5, alpha=2)),
        (torch.baddbmm(bc.cuda(), ba.cuda(), bb.cuda(), out_dtype=f),
         torch.baddbmm(bc.float(), ba.float(), bb.float())),
    ]
    for got, expected in cases:
        assert got.is_cuda and got.dtype == f
        assert torch.equal(got.cpu(), expected)
    out = torch.empty(0, device="cuda")
    torch.mm(a.cuda(), b.cuda(), out_dtype=f, out=out)
    assert out.shape == (4, 3) and torch.equal(out.cpu(), a.float() @ b.float())
    # Same dtype in and out: the plain matmul.
    assert torch.equal(torch.mm(a.cuda(), b.cuda(), out_dtype=dtype).cpu(), a @ b)


def test_out_dtype_checks_are_cudas():
    a = torch.randn(2, 2, device="cuda")
    with pytest.raises(RuntimeError, match="out_dtype must be the same as input dtype or fp32 for fp16/bf16 inputs"):
        torch.mm(a, a, out_dtype=torch.float16)
    with pytest.raises(RuntimeError, match="input dtypes must be the same"):
        torch.mm(a, a.half(), out_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="self must be a matrix"):
        torch.mm(a[0], a, out_dtype=torch.float32)


@pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="this torch has no F.linear_cross_entropy")
def test_linear_cross_entropy_takes_the_cuda_path():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g).bfloat16()
    w = torch.randn(10, 8, generator=g).bfloat16()
    target = torch.randint(0, 10, (6,), generator=g)
    got = F.linear_cross_entropy(x.cuda(), w.cuda(), target.cuda())
    expected = F.cross_entropy((x.float() @ w.float().T), target)
    assert got.is_cuda
    torch.testing.assert_close(got.float().cpu(), expected, atol=2e-2, rtol=2e-2)


def test_fused_dropout_keeps_with_probability_p_and_scales():
    x = torch.randn(1000, device="cuda")
    torch.manual_seed(0)
    out, mask = torch._fused_dropout(x, 0.8)
    assert mask.dtype == torch.uint8 and out.is_cuda
    assert torch.equal(out.cpu(), x.cpu() * mask.cpu() * (1 / 0.8))
    assert 0.7 < mask.float().mean().item() < 0.9
    assert torch.equal(torch._masked_scale(x, mask, 2.0).cpu(), x.cpu() * mask.cpu() * 2.0)


def _batch_norm_reference(x, weight, bias, eps):
    mean = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    return mean, (var + eps).rsqrt()


def test_batch_norm_statistics_kernels_match_batch_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    eps = 1e-5
    mean, invstd = torch.batch_norm_stats(x.cuda(), eps)
    ref_mean, ref_invstd = _batch_norm_reference(x, w, b, eps)
    torch.testing.assert_close(mean.cpu(), ref_mean)
    torch.testing.assert_close(invstd.cpu(), ref_invstd)
    y = torch.batch_norm_elemt(x.cuda(), w.cuda(), b.cuda(), mean, invstd, eps)
    torch.testing.assert_close(y.cpu(), F.batch_norm(x, None, None, w, b, training=True, eps=eps))
    # Statistics of two halves of the batch, merged, are those of the whole batch.
    m1, i1 = torch.batch_norm_stats(x[:1].cuda(), eps)
    m2, i2 = torch.batch_norm_stats(x[1:].cuda(), eps)
    running_mean, running_var = torch.zeros(3, dtype=torch.float64, device="cuda"), torch.ones(3, dtype=torch.float64, device="cuda")
    gm, gi = torch.batch_norm_gather_stats_with_counts(
        x.cuda(), torch.stack([m1, m2]), torch.stack([i1, i2]), running_mean, running_var, 0.1, eps,
        torch.tensor([25.0, 75.0], dtype=torch.float64, device="cuda"))
    torch.testing.assert_close(gm.cpu(), ref_mean)
    torch.testing.assert_close(gi.cpu(), ref_invstd)
    torch.testing.assert_close(running_mean.cpu(), 0.1 * ref_mean)
    torch.testing.assert_close(running_var.cpu(), 0.9 + 0.1 * x.var((0, 2, 3), unbiased=True))


def test_half_inputs_give_float_statistics_as_on_cuda():
    mean, invstd = torch.batch_norm_stats(torch.randn(2, 3, 4, device="cuda").half(), 1e-5)
    assert mean.dtype == invstd.dtype == torch.float32


def test_sync_batch_norm_in_a_process_group_equals_batch_norm():
    """SyncBatchNorm's autograd function (all its CUDA-only kernels) in a one-process group."""
    from torch.nn.modules._functions import SyncBatchNorm

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
            w, b = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
            xc, wc, bc = (t.cuda().requires_grad_() for t in (x, w, b))
            rm, rv = torch.zeros(3, dtype=torch.float64, device="cuda"), torch.ones(3, dtype=torch.float64, device="cuda")
            y = SyncBatchNorm.apply(xc, wc, bc, rm, rv, 1e-5, 0.1, dist.group.WORLD, 1)
            grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
            y.backward(grad.cuda())

            xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
            rm_ref, rv_ref = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
            y_ref = F.batch_norm(xr, rm_ref, rv_ref, wr, br, training=True, momentum=0.1, eps=1e-5)
            y_ref.backward(grad)
            torch.testing.assert_close(y.detach().cpu(), y_ref.detach())
            for got, expected in ((xc, xr), (wc, wr), (bc, br)):
                torch.testing.assert_close(got.grad.cpu(), expected.grad)
            torch.testing.assert_close(rm.cpu(), rm_ref)
            torch.testing.assert_close(rv.cpu(), rv_ref)
        finally:
            dist.destroy_process_group()


def test_library_probes_say_no_cudnn():
    lp = torch.randn(5, 2, 4, device="cuda").log_softmax(2)
    targets = torch.randint(1, 4, (2, 3), device="cuda")
    assert torch._use_cudnn_ctc_loss(lp, targets, [5, 5], [3, 3], 0) is False


def test_other_cuda_only_operators_name_themselves():
    x = torch.ones(1, 1, 3, 3, device="cuda")
    with pytest.raises(NotImplementedError, match="'aten::cudnn_convolution' is a CUDA-only operator"):
        torch.ops.aten.cudnn_convolution(x, torch.ones(1, 1, 1, 1, device="cuda"), [0, 0], [1, 1], [1, 1], 1,
                                         False, False, False)
    # The public form runs the CPU kernel.
    w = torch.randn(1, 1, 1, 1)
    assert torch.equal(F.conv2d(x, w.cuda()).cpu(), F.conv2d(x.cpu(), w))
