"""Hand-written Triton kernels on emulated cuda tensors run on Triton's interpreter, with no flag.

The kernels are the ones Triton's tutorials teach (vector add, fused softmax, an autotuned
matmul with a jit helper, layer norm forward and backward), written here for these tests; their
results are compared with torch's eager ops on the same data.
"""

from __future__ import annotations

import os
import textwrap

import pytest
import torch

from tests.conftest import python

triton = pytest.importorskip("triton", reason="Triton ships with the CUDA wheel of torch only")
tl = pytest.importorskip("triton.language")

DEVICE = "cuda"


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask), mask=mask)


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=cols < n_cols, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    numerator = tl.exp(x)
    tl.store(out_ptr + row * out_row_stride + cols, numerator / tl.sum(numerator, axis=0), mask=cols < n_cols)


@triton.jit
def leaky_relu(x):
    return tl.where(x >= 0, x, 0.01 * x)


@triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16}),
    ],
    key=["M", "N", "K"],
)
@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACTIVATION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        kk = k * BLOCK_K + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    if ACTIVATION == "leaky_relu":
        acc = leaky_relu(acc)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def layer_norm_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, stride, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    diff = tl.where(mask, x - mean, 0.0)
    rstd = 1 / tl.sqrt(tl.sum(diff * diff, axis=0) / n_cols + eps)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)
    w = tl.load(w_ptr + cols, mask=mask)
    b = tl.load(b_ptr + cols, mask=mask)
    tl.store(y_ptr + row * stride + cols, diff * rstd * w + b, mask=mask)


@triton.jit
def layer_norm_bwd_kernel(dx_ptr, dy_ptr, dw_part_ptr, db_part_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, stride, n_cols,
                          BLOCK: tl.constexpr):
    # One program per row: dx of the row, and the row's share of dw and db (summed on the host).
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask).to(tl.float32)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    wdy = tl.where(mask, w * dy, 0.0)
    c1 = tl.sum(xhat * wdy, axis=0) / n_cols
    c2 = tl.sum(wdy, axis=0) / n_cols
    tl.store(dx_ptr + row * stride + cols, (wdy - (xhat * c1 + c2)) * rstd, mask=mask)
    tl.store(dw_part_ptr + row * stride + cols, dy * xhat, mask=mask)
    tl.store(db_part_ptr + row * stride + cols, dy, mask=mask)


def test_vector_add_runs_on_emulated_tensors_and_stays_on_the_device():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    x = torch.rand(1000, device=DEVICE)
    y = torch.rand(1000, device=DEVICE)
    out = torch.empty_like(x)
    add_kernel[(triton.cdiv(1000, 256),)](x, y, out, 1000, BLOCK=256)
    assert out.device == torch.device("cuda:0")
    torch.testing.assert_close(out, x + y, rtol=0, atol=0)


def test_fused_softmax_equals_torch_softmax():
    x = torch.randn(37, 181, device=DEVICE)
    out = torch.empty_like(x)
    softmax_kernel[(x.shape[0],)](out, x, x.stride(0), out.stride(0), x.shape[1], BLOCK=triton.next_power_of_2(181))
    torch.testing.assert_close(out, torch.softmax(x, dim=1))


@pytest.mark.parametrize("activation", ["", "leaky_relu"])
def test_autotuned_matmul_with_a_jit_helper_equals_torch_matmul(activation):
    a = torch.randn(48, 40, device=DEVICE)
    b = torch.randn(40, 56, device=DEVICE)
    c = torch.empty(48, 56, device=DEVICE)

    def grid(meta):
        return triton.cdiv(48, meta["BLOCK_M"]), triton.cdiv(56, meta["BLOCK_N"])

    matmul_kernel[grid](a, b, c, 48, 56, 40, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0),
                        c.stride(1), ACTIVATION=activation)
    expected = a @ b
    if activation:
        expected = torch.nn.functional.leaky_relu(expected, 0.01)
    torch.testing.assert_close(c, expected, rtol=1e-4, atol=1e-4)
    assert matmul_kernel.best_config is not None  # the autotuner timed both configs on the emulated device


def test_layer_norm_forward_and_backward_equal_torch():
    rows, cols, eps = 24, 100, 1e-5
    block = triton.next_power_of_2(cols)
    x = torch.randn(rows, cols, device=DEVICE, requires_grad=True)
    w = torch.randn(cols, device=DEVICE, requires_grad=True)
    b = torch.randn(cols, device=DEVICE, requires_grad=True)
    dy = torch.randn(rows, cols, device=DEVICE)
    y = torch.empty_like(x)
    mean = torch.empty(rows, device=DEVICE)
    rstd = torch.empty(rows, device=DEVICE)
    layer_norm_fwd_kernel[(rows,)](x, y, w, b, mean, rstd, x.stride(0), cols, eps, BLOCK=block)
    expected = torch.nn.functional.layer_norm(x, (cols,), w, b, eps)
    torch.testing.assert_close(y, expected.detach())

    dx, dw_part, db_part = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    layer_norm_bwd_kernel[(rows,)](dx, dy, dw_part, db_part, x, w, mean, rstd, x.stride(0), cols, BLOCK=block)
    expected.backward(dy)
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(dw_part.sum(0), w.grad)
    torch.testing.assert_close(db_part.sum(0), b.grad)


def test_triton_driver_names_the_emulated_device():
    driver = triton.runtime.driver.active
    assert driver.get_active_torch_device() == torch.device("cuda", torch.cuda.current_device())
    assert driver.utils.get_device_properties(0)["multiprocessor_count"] >= 1


def test_launch_from_a_fresh_process_without_any_flag(tmp_path):
    # As a user runs a script: torchdevice activated from the environment, Triton imported after.
    script = tmp_path / "vector_add.py"
    script.write_text(textwrap.dedent("""
        import torch, triton, triton.language as tl

        @triton.jit
        def add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
            offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offsets < n
            tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask), mask=mask)

        DEVICE = triton.runtime.driver.active.get_active_torch_device()
        x = torch.arange(300.0, device=DEVICE); y = torch.ones(300, device=DEVICE)
        out = torch.empty_like(x)
        add[(triton.cdiv(300, 128),)](x, y, out, 300, BLOCK=128)
        assert torch.equal(out, x + y), out
        print(out.device)
    """))
    proc = python([str(script)], env={"TORCH_DEVICE_BACKEND": "cpu", "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "cuda:0"
