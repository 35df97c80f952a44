"""The runner interface: which device computes, and ops the runner lacks running on the CPU.

Only the cpu runner can execute on CI machines. The path a device runner (mps, cuda) takes for an
op it has no kernel for - host copies in, the CPU kernel, copies back, counted in the census - is
exercised here through the test hook that makes the cpu runner treat an op as missing.
"""

import pytest
import torch

from torchdevice import _C


def test_cuda_runs_on_the_cpu_runner():
    assert _C.runner("cuda") == "cpu"


@pytest.fixture
def missing():
    """Ops named through it run as if the runner had no kernel for them; undone afterwards."""

    def simulate(*names):
        for name in names:
            _C.simulate_missing_kernel("cuda", name)

    yield simulate
    _C.simulate_missing_kernel("cuda", "")


def test_functional_op_runs_on_the_host_and_is_counted(missing):
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    missing("aten::atan2")
    out = torch.atan2(a.cuda(), b.cuda())
    assert out.is_cuda and out.device == torch.device("cuda", 0)
    assert torch.equal(out.cpu(), torch.atan2(a, b))
    assert _C.runner_census("cuda") == {"aten::atan2": 1}


def test_inplace_and_out_write_back_into_the_arguments(missing):
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    missing("aten::atan2_", "aten::atan2")
    x = a.cuda()
    assert x.atan2_(b.cuda()) is x
    assert torch.equal(x.cpu(), torch.atan2(a, b))

    out = torch.empty(0, device="cuda")
    assert torch.atan2(a.cuda(), b.cuda(), out=out) is out
    assert out.shape == (4, 3) and torch.equal(out.cpu(), torch.atan2(a, b))

    column = torch.zeros(4, 3, device="cuda")[:, 1]  # a strided view: written through
    column.atan2_(torch.ones(4, device="cuda"))
    assert torch.equal(column.cpu(), torch.atan2(torch.zeros(4), torch.ones(4)))
    assert _C.runner_census("cuda") == {"aten::atan2_": 2, "aten::atan2.out": 1}


def test_multiple_results_and_autograd(missing):
    x = torch.randn(5, 4)
    missing("aten::sort", "aten::atan2")
    values, indices = torch.sort(x.cuda(), dim=1)
    expected_values, expected_indices = torch.sort(x, dim=1)
    assert values.is_cuda and indices.is_cuda
    assert torch.equal(values.cpu(), expected_values) and torch.equal(indices.cpu(), expected_indices)

    leaf = x.cuda().requires_grad_()
    torch.atan2(leaf, torch.ones_like(leaf)).sum().backward()
    host_leaf = x.clone().requires_grad_()
    torch.atan2(host_leaf, torch.ones_like(host_leaf)).sum().backward()
    assert leaf.grad.is_cuda and torch.equal(leaf.grad.cpu(), host_leaf.grad)


def test_mixed_devices_still_raise(missing):
    missing("aten::atan2")
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        torch.atan2(torch.ones(3, device="cuda"), torch.ones(3))
    assert _C.runner_census("cuda") == {"aten::atan2": 1}


def test_seeded_op_draws_from_the_device_generator(missing):
    missing("aten::normal.Tensor_float")
    mean = torch.zeros(8)
    gen = torch.Generator("cuda").manual_seed(3)
    drawn = torch.normal(mean.cuda(), 1.0, generator=gen)
    expected = torch.normal(mean, 1.0, generator=torch.Generator().manual_seed(3))
    assert drawn.is_cuda and torch.equal(drawn.cpu(), expected)


def test_a_device_runner_cannot_be_chosen_here():
    # cuda already runs on the cpu runner; the runner is chosen once per process.
    with pytest.raises(RuntimeError, match="already runs on cpu"):
        _C.activate("cuda", 1, "mps")


def test_runner_names_are_checked():
    with pytest.raises(ValueError, match="runner must be 'cpu', 'cuda' or 'mps', got 'tpu'"):
        _C.activate("cuda", 1, "tpu")
