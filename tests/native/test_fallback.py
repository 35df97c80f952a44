"""The boxed fallback keeps CUDA semantics: devices, views, in-place, out=, resizing."""

import pytest
import torch


def test_outputs_are_cuda_and_equal_cpu():
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    out = a.cuda() @ b.cuda()
    assert out.is_cuda and out.device == torch.device("cuda", 0)
    assert out.untyped_storage().device.type == "cuda"
    assert torch.equal(out.cpu(), a @ b)


def test_inplace_returns_same_object():
    x = torch.randn(4).cuda()
    y = x.add_(1)
    assert y is x and x.is_cuda


def test_out_argument_is_filled_and_resized():
    out = torch.empty(0, device="cuda")
    torch.add(torch.ones(3, device="cuda"), 1, out=out)
    assert out.shape == (3,) and out.is_cuda
    assert torch.equal(out.cpu(), torch.full((3,), 2.0))


def test_views_share_memory_with_base():
    x = torch.zeros(4, 4, device="cuda")
    v = x[1:3, ::2]
    v.fill_(1)
    assert v.is_cuda and v._base is x
    assert x.sum().item() == 4
    assert v.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_resize_keeps_existing_views_consistent():
    x = torch.arange(4.0, device="cuda")
    x.resize_(100)
    assert x.shape == (100,) and x.is_cuda
    assert torch.equal(x[:4].cpu(), torch.arange(4.0))


def test_mixed_cpu_and_cuda_raise_like_cuda():
    with pytest.raises(RuntimeError, match=r"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"):
        torch.ones(3, device="cuda") + torch.ones(3)


def test_cpu_scalar_tensors_mix_with_cuda():
    out = torch.ones(3, device="cuda") * torch.tensor(2.0)
    assert out.is_cuda and torch.equal(out.cpu(), torch.full((3,), 2.0))


def test_cpu_indices_allowed_for_indexing():
    x = torch.arange(10.0, device="cuda")
    assert torch.equal(x[torch.tensor([1, 3])].cpu(), torch.tensor([1.0, 3.0]))
    x[torch.tensor([0])] = 5.0
    assert x[0].item() == 5.0


def test_invalid_ordinal_raises_accelerator_error():
    with pytest.raises(torch.AcceleratorError, match="CUDA error: invalid device ordinal"):
        torch.ones(1, device="cuda:7")


def test_numpy_on_cuda_raises_like_cuda():
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        torch.ones(2, device="cuda").numpy()


def test_memory_counts_follow_tensor_lifetime():
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    x = torch.empty(1024, device="cuda")  # factory
    y = x + 1  # output made by a CPU kernel, adopted by the device allocator
    assert torch.cuda.memory_allocated() == before + 2 * 4096
    del x, y
    assert torch.cuda.memory_allocated() == before


def test_to_other_device_and_back():
    x = torch.randn(3)
    assert torch.equal(x.cuda().cpu(), x)
    assert x.to("cuda", torch.float64).dtype == torch.float64


def test_lazy_clone_is_a_materialized_copy():
    """torch._lazy_clone (copy-on-write on CPU and CUDA) gives CPU's sizes, strides and offset, and its own memory."""
    host = torch.arange(12.0).view(3, 4)[:, 1:]
    expected = torch._lazy_clone(host)
    original = torch.arange(12.0, device="cuda").view(3, 4)[:, 1:]
    clone = torch._lazy_clone(original)
    assert clone.is_cuda
    assert (clone.shape, clone.stride(), clone.storage_offset()) == (expected.shape, expected.stride(), expected.storage_offset())
    assert clone.untyped_storage().nbytes() == expected.untyped_storage().nbytes()
    assert torch.equal(clone.cpu(), expected)
    original.fill_(-1)
    assert torch.equal(clone.cpu(), expected)


# --- where a CPU tensor may join cuda ones (as CUDA kernels check) --------------------------

_MIXED = r"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"


@pytest.mark.parametrize("out_shape", [[], [3]], ids=["0-dim", "1-dim"])
def test_out_on_cpu_is_refused_even_as_a_scalar(out_shape):
    t = torch.tensor([0.0, 1.0, 1.0], device="cuda")
    with pytest.raises(RuntimeError, match="on the same device"):
        torch.nonzero(t, out=torch.empty(out_shape, dtype=torch.long))
    with pytest.raises(RuntimeError, match=_MIXED):
        torch.add(t, t, out=torch.empty(out_shape))


def test_inplace_on_cpu_scalar_with_cuda_operand_is_refused():
    with pytest.raises(RuntimeError, match="on the same device"):
        torch.zeros(()).add_(torch.ones(3, device="cuda").sum())


def test_cpu_scalar_inputs_still_join_cuda_ones():
    t = torch.ones(3, device="cuda")
    assert torch.equal((t * torch.tensor(2.0)).cpu(), torch.full((3,), 2.0))
    out = torch.empty(3, device="cuda")
    torch.mul(t, torch.tensor(3.0), out=out)
    assert torch.equal(out.cpu(), torch.full((3,), 3.0))


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_takes_cpu_indices_but_not_cpu_values(accumulate):
    b = torch.zeros(5, device="cuda")
    idx = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match=_MIXED):
        torch.index_put_(b, (idx,), torch.tensor([1.0, 2.0]), accumulate=accumulate)
    # CPU indices, cuda values, and 0-dim CPU values (moved to the device) are fine on a GPU.
    torch.index_put_(b, (idx,), torch.tensor([1.0, 2.0], device="cuda"), accumulate=accumulate)
    b[torch.tensor([3])] = torch.tensor(7.0)
    expected = torch.zeros(5)
    torch.index_put_(expected, (idx,), torch.tensor([1.0, 2.0]), accumulate=accumulate)
    expected[3] = 7.0
    assert torch.equal(b.cpu(), expected)
    assert torch.equal(b[idx].cpu(), expected[idx])


def test_cpu_self_with_cuda_indices_is_refused():
    with pytest.raises(RuntimeError, match="same device"):
        torch.zeros(5)[torch.tensor([0, 1], device="cuda")]


def test_block_diag_names_the_devices_as_on_a_gpu():
    with pytest.raises(RuntimeError, match=r"torch.block_diag: input tensors must all be on the same device. "
                                           r"Input 0 is on device cpu and input 1 is on device cuda:0"):
        torch.block_diag(torch.ones(2, 2), torch.ones(2, 2, device="cuda"))
    a, b = torch.randn(2, 3), torch.randn(1, 2)
    assert torch.equal(torch.block_diag(a.cuda(), b.cuda()).cpu(), torch.block_diag(a, b))


def test_generator_for_a_missing_device_is_refused_as_by_cuda():
    with pytest.raises(RuntimeError, match="The device_index is invalid."):
        torch.Generator(device=f"cuda:{torch.cuda.device_count()}")


def test_quantized_tensors_are_refused_at_creation_on_the_device():
    # No emulated QuantizedCUDA backend: creation fails saying so, not every later op.
    with pytest.raises(NotImplementedError, match="no quantized backend"):
        torch.quantize_per_tensor(torch.randn(4, device="cuda"), 0.1, 0, torch.quint8)
    with pytest.raises(NotImplementedError, match="QuantizedCUDA"):
        torch._empty_affine_quantized([2], scale=0.1, zero_point=0, dtype=torch.quint8, device="cuda")
