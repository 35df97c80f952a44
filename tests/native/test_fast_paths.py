"""Unboxed fast paths for hot ops (csrc/dispatch/fast_paths.cpp): same semantics as the fallback."""

import pytest
import torch

FAST = ["aten::add.Tensor", "aten::mul_.Tensor", "aten::addmm", "aten::zero_", "aten::view", "aten::_foreach_add_.List"]
BOXED = ["aten::atan2", "aten::index.Tensor", "aten::bernoulli_.float"]


def has_typed_cuda_kernel(op: str) -> bool:
    """The dispatcher prints a kernel's C++ signature, or "(none)" for a boxed-only kernel."""
    lines = [line for line in torch._C._dispatch_dump(op).splitlines() if line.startswith("CUDA:")]
    assert len(lines) == 1, lines
    return ":: (none)" not in lines[0]


@pytest.mark.parametrize("op", FAST)
def test_hot_ops_have_unboxed_kernels(op):
    assert has_typed_cuda_kernel(op)


@pytest.mark.parametrize("op", BOXED)
def test_other_ops_use_the_boxed_fallback(op):
    assert not has_typed_cuda_kernel(op)


def test_results_equal_cpu_bit_for_bit():
    torch.manual_seed(0)
    a, b, bias = torch.randn(8, 16), torch.randn(16, 4), torch.randn(4)
    expected = [torch.addmm(bias, a, b), (a * 3 - a.exp()).sum(1), torch.relu(a).mean(0), a.t().contiguous()]
    ac, bc, biasc = a.cuda(), b.cuda(), bias.cuda()
    got = [torch.addmm(biasc, ac, bc), (ac * 3 - ac.exp()).sum(1), torch.relu(ac).mean(0), ac.t().contiguous()]
    for g, e in zip(got, expected):
        assert g.is_cuda and g.dtype == e.dtype and g.stride() == e.stride()
        assert torch.equal(g.cpu(), e)


def test_inplace_returns_the_argument_and_bumps_its_version():
    x = torch.zeros(3, device="cuda")
    version = x._version
    assert x.zero_() is x and x.mul_(2) is x
    assert x._version == version + 2


def test_views_share_storage_and_version_counter():
    x = torch.zeros(4, 4, device="cuda")
    v = x.view(16)
    t = x.t()
    assert v.is_cuda and v.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert t._base is x and t.stride() == (1, 4)
    v.add_(1)
    assert x._version == v._version == 1
    assert torch.equal(x.cpu(), torch.ones(4, 4))


def test_out_argument_resized_on_the_device():
    out = torch.empty(0, device="cuda")
    result = torch.add(torch.ones(5, device="cuda"), 1, out=out)
    assert result is out and out.shape == (5,) and out.is_cuda
    assert out.untyped_storage().device.type == "cuda"


def test_mixed_devices_raise_the_fallbacks_error():
    x = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match=r"Expected all tensors to be on the same device, but found at least two "
                                           r"devices, cuda:0 and cpu!"):
        x + torch.ones(3)
    with pytest.raises(RuntimeError, match=r"cuda:0 and cpu!"):
        torch.ones(3) + x  # the device side is named first, as TensorIterator does
    assert torch.equal((x + torch.tensor(2.0)).cpu(), torch.full((3,), 3.0))  # 0-dim CPU scalars mix


def test_foreach_inplace_updates_every_tensor():
    xs = [torch.ones(3, device="cuda"), torch.ones(2, 2, device="cuda")]
    ys = [torch.full((3,), 2.0, device="cuda"), torch.full((2, 2), 3.0, device="cuda")]
    torch._foreach_add_(xs, ys)
    assert [x.cpu().tolist() for x in xs] == [[3.0] * 3, [[4.0, 4.0], [4.0, 4.0]]]
    roots = torch._foreach_sqrt(xs)
    assert all(r.is_cuda for r in roots)


def test_outputs_are_counted_and_released():
    x = torch.randn(256, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    y = x * 2
    assert torch.cuda.memory_allocated() == before + y.untyped_storage().nbytes()
    del y
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize(
    "shape, view",
    [
        ((16,), lambda t: t),  # small and dense: one memset, as CPU's zero_ does
        ((4, 6), lambda t: t.t()),  # dense but permuted
        ((6, 8), lambda t: t[:, ::2]),  # strided: the CPU kernel on a stand-in
        ((40000,), lambda t: t),  # past the grain size: fill_(0)
        ((0,), lambda t: t),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.complex64])
def test_zero_clears_exactly_what_cpu_clears(shape, view, dtype):
    host = torch.arange(1, 1 + torch.Size(shape).numel()).view(shape).to(dtype)
    device = host.cuda()
    host_view, device_view = view(host), view(device)
    version = device_view._version
    assert device_view.zero_() is device_view and device_view._version == version + 1
    host_view.zero_()
    assert torch.equal(device.cpu(), host)  # the view's neighbours are untouched too


def test_reused_stand_ins_keep_no_memory_alive():
    """Fast paths reuse their stand-ins across calls; a freed tensor's memory is still freed."""
    before = torch.cuda.memory_allocated()
    x = torch.ones(1 << 18, device="cuda")
    for _ in range(3):
        y = x + x
    del x, y
    assert torch.cuda.memory_allocated() == before


def test_reused_stand_ins_follow_metadata_changes():
    host = torch.arange(12.0)
    device = host.cuda()
    assert torch.equal((device + 1).cpu(), host + 1)  # the stand-in is now cached
    for change in (lambda t: t.resize_(3, 4), lambda t: t.t_(), lambda t: t.as_strided_((2, 2), (1, 3), 1)):
        change(host), change(device)
        assert torch.equal((device * 2).cpu(), host * 2)
    z = torch.randn(3, dtype=torch.complex64)
    zc = z.cuda()
    assert torch.equal((zc + 1).cpu(), z + 1)
    assert torch.equal((zc.conj() + 1).cpu(), z.conj() + 1)  # same memory, another key set


@pytest.mark.parametrize(
    "op",
    [lambda x: x[1:].add_(x[:-1]), lambda x: torch.add(x[:4], 1, out=x[2:6]), lambda x: x.mul_(x[:1].expand(8))],
)
def test_aliasing_arguments_are_checked_as_on_cpu(op):
    """Stand-ins of tensors sharing memory share a storage, so the CPU kernel's overlap checks hold."""
    host, device = torch.arange(8.0), torch.arange(8.0, device="cuda")
    device + device  # a cached stand-in of `device` exists now
    try:
        op(host)
    except RuntimeError as e:
        with pytest.raises(RuntimeError, match="refer to a single memory location"):
            op(device)
        assert "refer to a single memory location" in str(e)
    else:
        op(device)
        assert torch.equal(device.cpu(), host)
