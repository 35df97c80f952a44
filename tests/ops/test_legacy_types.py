"""The legacy typed tensor API on cuda: torch.cuda.FloatTensor(...), set_default_tensor_type, .type()."""

import pytest
import torch


def test_typed_constructors_make_cuda_tensors():
    x = torch.cuda.FloatTensor(4)
    assert x.is_cuda and x.dtype == torch.float32 and x.shape == (4,)
    assert torch.equal(torch.cuda.LongTensor([1, 2]).cpu(), torch.tensor([1, 2]))
    assert torch.cuda.HalfTensor(2, 3).dtype == torch.float16
    assert torch.cuda.ByteTensor(torch.Size([2])).device == torch.device("cuda", 0)
    y = torch.cuda.DoubleTensor([[1, 2]], device="cuda:0")
    assert y.dtype == torch.float64 and y.shape == (1, 2)
    # A storage and a tensor of the same type are aliased, as on a GPU.
    s = torch.cuda.FloatTensor(3).untyped_storage()
    assert torch.cuda.FloatTensor(torch.cuda.FloatTensor(3)).is_cuda
    assert torch.cuda.FloatTensor(torch.zeros(3, device="cuda")).untyped_storage().nbytes() == s.nbytes()


def test_typed_constructor_refuses_a_cpu_tensor_as_on_a_gpu():
    with pytest.raises(TypeError, match="expected TensorOptions"):
        torch.cuda.FloatTensor(torch.ones(2))


def test_type_conversions_and_checks():
    x = torch.ones(2)
    assert x.type(torch.cuda.FloatTensor).is_cuda
    h = x.type("torch.cuda.HalfTensor")
    assert h.is_cuda and h.dtype == torch.float16
    assert isinstance(h.float(), torch.cuda.FloatTensor)
    assert h.type() == "torch.cuda.HalfTensor"
    assert h.type(torch.FloatTensor).device.type == "cpu"


def test_set_default_tensor_type_to_a_cuda_type_and_back():
    saved = torch.tensor([]).type()
    try:
        torch.set_default_tensor_type(torch.cuda.DoubleTensor)
        x = torch.zeros(2)
        assert x.is_cuda and x.dtype == torch.float64
        torch.set_default_tensor_type("torch.cuda.FloatTensor")
        assert torch.tensor(0.0).is_cuda and torch.tensor(0.0).dtype == torch.float32
    finally:
        torch.set_default_tensor_type(saved)
    assert torch.zeros(2).device.type == "cpu" and torch.zeros(2).dtype == torch.float32
