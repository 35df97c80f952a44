"""scaled_dot_product_attention on emulated cuda (csrc/dispatch/attention.cpp).

The backend is a GPU's (memory-efficient attention where the CPU would run its flash kernel;
flash attention when only that is allowed), so DTensor, the FlopCounter and torch.compile see
CUDA's ops; the values and gradients are the CPU flash kernel's, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

EFFICIENT = int(SDPBackend.EFFICIENT_ATTENTION)
MATH = int(SDPBackend.MATH)


def qkv(*shape, dtype=torch.float32, kv_heads=None):
    torch.manual_seed(0)
    q = torch.randn(*shape, dtype=dtype)
    kv_shape = list(shape)
    if kv_heads is not None:
        kv_shape[1] = kv_heads
    return q, torch.randn(*kv_shape, dtype=dtype), torch.randn(*kv_shape, dtype=dtype)


def on_both(q, k, v, **kwargs):
    """(cpu result, cuda result, cpu grads, cuda grads) of SDPA with a backward."""
    results = []
    for device in ("cpu", "cuda"):
        inputs = [t.detach().clone().to(device).requires_grad_() for t in (q, k, v)]
        extra = {a: b.to(device) if torch.is_tensor(b) else b for a, b in kwargs.items()}
        out = F.scaled_dot_product_attention(*inputs, **extra)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out).to(out.dtype)).sum().backward()
        results.append((out, [t.grad for t in inputs]))
    return results


@pytest.mark.parametrize(
    "kwargs",
    [dict(is_causal=True), dict(), dict(scale=0.3), dict(attn_mask=torch.randn(7, 7)),
     dict(attn_mask=torch.rand(2, 1, 7, 7) > 0.3), dict(enable_gqa=True)],
    ids=["causal", "plain", "scale", "float-mask", "bool-mask", "gqa"],
)
def test_values_and_gradients_are_the_cpus(kwargs):
    q, k, v = qkv(2, 4, 7, 8, kv_heads=2 if kwargs.get("enable_gqa") else None)
    (cpu_out, cpu_grads), (cuda_out, cuda_grads) = on_both(q, k, v, **kwargs)
    assert cuda_out.is_cuda and torch.equal(cuda_out.cpu(), cpu_out)
    for got, want in zip(cuda_grads, cpu_grads):
        assert got.is_cuda and torch.equal(got.cpu(), want)


def test_the_backend_is_a_gpus():
    q, k, v = (t.cuda() for t in qkv(2, 4, 7, 8))
    assert torch._fused_sdp_choice(q, k, v) == EFFICIENT
    assert torch._fused_sdp_choice(q, k, v, dropout_p=0.1) == MATH  # as the CPU: no flash with dropout
    out = F.scaled_dot_product_attention(q.requires_grad_(), k, v)
    assert "EfficientAttention" in type(out.grad_fn).__name__
    # CUDA's output layout (the op's meta function's): (B, L, H, E) storage.
    lse_meta = torch.ops.aten._scaled_dot_product_efficient_attention(q.detach(), k, v, None, True)
    assert lse_meta[0].stride() == (7 * 4 * 8, 8, 4 * 8, 1)
    assert lse_meta[1].shape == (2, 4, 32)  # rows padded to a multiple of 32


def test_flash_attention_when_only_flash_is_allowed():
    q, k, v = qkv(2, 4, 7, 8, dtype=torch.float16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        (cpu_out, cpu_grads), (cuda_out, cuda_grads) = on_both(q, k, v, is_causal=True)
        assert "FlashAttention" in type(F.scaled_dot_product_attention(
            q.cuda().requires_grad_(), k.cuda(), v.cuda()).grad_fn).__name__
    assert torch.equal(cuda_out.cpu(), cpu_out)
    for got, want in zip(cuda_grads, cpu_grads):
        assert torch.equal(got.cpu(), want)


def test_flop_counter_counts_attention_as_on_a_gpu():
    q, k, v = (t.cuda() for t in qkv(2, 4, 7, 8))
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert counter.get_total_flops() == 4 * 2 * 4 * 7 * 7 * 8  # two matmuls of 2*B*H*L*L*E


def test_compiled_attention_matches_eager():
    q, k, v = (t.cuda() for t in qkv(2, 4, 7, 8))
    compiled = torch.compile(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True))
    qg = q.clone().requires_grad_()
    out = compiled(qg, k, v)
    out.sum().backward()
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected)
    assert qg.grad.is_cuda
