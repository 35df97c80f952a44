"""TorchScript on the emulated device: scripted, traced, frozen, saved and loaded code runs on
emulated cuda with the results the same program gives on the CPU.

Each scripted function is called several times: the profiling executor runs the first call as
written, records tensor types on it, and optimizes (specializes, fuses) from the second or
third call on, so the later calls take other paths than the first.
"""

from __future__ import annotations

import io

import pytest
import torch

CALLS = 4  # the profiling executor's specialized graph is in use from the 3rd call


def calls(fn, *args):
    return [fn(*args) for _ in range(CALLS)]


def assert_same_on_cpu(cuda_results, cpu_results):
    for got, want in zip(cuda_results, cpu_results):
        if isinstance(got, (tuple, list)):
            assert_same_on_cpu(got, want)
            continue
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@torch.jit.script
def advanced_index(t: torch.Tensor, idx: torch.Tensor):
    return t[:, idx, :, :]


@torch.jit.script
def index_assign(t: torch.Tensor, idx: torch.Tensor, values: torch.Tensor):
    t = t.clone()
    t[idx] = values
    t[:, idx] += 1.0
    return t


@torch.jit.script
def masked_and_nonzero(t: torch.Tensor):
    mask = t > 0.5
    return t[mask], torch.nonzero(mask), t.index_select(0, torch.nonzero(mask[:, 0]).flatten())


@torch.jit.script
def elementwise_chain(x: torch.Tensor, y: torch.Tensor):
    # Fusible on a GPU build (TorchScript's tensor-expression fuser): must not try to compile a
    # CUDA kernel for the emulated device.
    return torch.sigmoid(x * y + 1.0).relu() * torch.tanh(y - x)


def test_advanced_indexing_in_a_scripted_function():
    # A list TorchScript builds for Tensor?[] (aten::index) must be lowered like eager's.
    t = torch.rand(2, 3, 3, 4)
    idx = torch.tensor([0, 2, 1])
    got = calls(advanced_index, t.cuda(), idx.cuda())
    assert_same_on_cpu(got, calls(advanced_index, t, idx))


def test_index_put_and_masks_in_a_scripted_function():
    t = torch.rand(4, 3)
    idx = torch.tensor([0, 2])
    values = torch.rand(2, 3)
    assert_same_on_cpu(calls(index_assign, t.cuda(), idx.cuda(), values.cuda()), calls(index_assign, t, idx, values))
    assert_same_on_cpu(calls(masked_and_nonzero, t.cuda()), calls(masked_and_nonzero, t))


def test_index_with_cpu_values_raises_as_on_a_gpu_when_scripted():
    t = torch.rand(4, 3, device="cuda")
    with pytest.raises(RuntimeError, match="same device|Expected all tensors"):
        index_assign(t, torch.tensor([0, 2], device="cuda"), torch.rand(2, 3))


def test_a_fusible_elementwise_chain_runs_and_equals_cpu():
    x, y = torch.rand(64, 32), torch.rand(64, 32)
    got = calls(elementwise_chain, x.cuda(), y.cuda())
    assert_same_on_cpu(got, calls(elementwise_chain, x, y))


def test_gpu_fusion_is_off_for_the_emulated_device():
    # The GPU fusers (tensor-expression and legacy) generate CUDA C; the emulated device's memory
    # is host memory, which they cannot run on.
    assert not torch._C._jit_can_fuse_on_gpu()


class Gate(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor, steps: int = 2):
        for _ in range(steps):
            h = self.linear(x)
            if bool(h.mean() > 0):
                x = self.norm(h).relu()
            else:
                x = torch.tanh(h) + x
        return x


def _module_pair():
    torch.manual_seed(0)
    cpu = Gate().eval()
    cuda = Gate().eval()
    cuda.load_state_dict(cpu.state_dict())
    return cpu, cuda.cuda()


def test_scripted_module_with_control_flow():
    cpu, cuda = _module_pair()
    x = torch.randn(5, 8)
    s_cpu, s_cuda = torch.jit.script(cpu), torch.jit.script(cuda)
    assert_same_on_cpu(calls(s_cuda, x.cuda()), calls(s_cpu, x))


def test_traced_module():
    cpu, cuda = _module_pair()
    x = torch.randn(5, 8)
    t_cpu = torch.jit.trace(cpu, (x,), check_trace=False)
    t_cuda = torch.jit.trace(cuda, (x.cuda(),), check_trace=False)
    # The trace records the device it ran on: factories inside it make cuda tensors.
    assert "cuda" in str(next(t_cuda.parameters()).device)
    assert_same_on_cpu(calls(t_cuda, x.cuda()), calls(t_cpu, x))


def test_freeze_and_optimize_for_inference():
    cpu, cuda = _module_pair()
    x = torch.randn(5, 8)
    f_cpu = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(cpu)))
    f_cuda = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(cuda)))
    got, want = calls(f_cuda, x.cuda()), calls(f_cpu, x)
    for g, w in zip(got, want):
        assert g.device.type == "cuda"
        # optimize_for_inference may fold ops differently per device (as on a GPU): same maths.
        torch.testing.assert_close(g.cpu(), w)


def _saved(module) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return buffer


def test_save_on_cuda_and_load_with_and_without_map_location():
    cpu, cuda = _module_pair()
    x = torch.randn(5, 8)
    want = cpu(x)
    data = _saved(cuda).getvalue()

    # Saved with cuda tensors, loaded with no map_location: the tensors come back on cuda.
    plain = torch.jit.load(io.BytesIO(data))
    assert next(plain.parameters()).device == torch.device("cuda", 0)
    torch.testing.assert_close(plain(x.cuda()).cpu(), want, rtol=0, atol=0)

    to_cpu = torch.jit.load(io.BytesIO(data), map_location="cpu")
    assert next(to_cpu.parameters()).device.type == "cpu"
    torch.testing.assert_close(to_cpu(x), want, rtol=0, atol=0)

    # Saved on the CPU, loaded straight onto cuda.
    to_cuda = torch.jit.load(_saved(cpu), map_location="cuda")
    assert next(to_cuda.parameters()).device == torch.device("cuda", 0)
    torch.testing.assert_close(to_cuda(x.cuda()).cpu(), want, rtol=0, atol=0)
    to_cuda_dev = torch.jit.load(_saved(cpu), map_location=torch.device("cuda:0"))
    assert next(to_cuda_dev.parameters()).is_cuda


def test_load_to_a_device_that_does_not_exist_raises():
    cpu, _ = _module_pair()
    count = torch.cuda.device_count()
    with pytest.raises(RuntimeError):
        torch.jit.load(_saved(cpu), map_location=f"cuda:{count}")


@torch.jit.script
def _half(x: torch.Tensor):
    return torch.matmul(x, x.t()).sum(1)


@torch.jit.script
def fork_and_wait(x: torch.Tensor):
    futures = [torch.jit.fork(_half, x + i) for i in range(3)]
    return torch.stack([torch.jit.wait(f) for f in futures])


def test_fork_and_wait():
    x = torch.rand(6, 4)
    assert_same_on_cpu(calls(fork_and_wait, x.cuda()), calls(fork_and_wait, x))


def _scripted_loss():
    # A new function per device: the profiling executor keeps one plan per function, and the
    # first call with other devices would take the plan's fallback path instead of a first call's.
    def loss(x: torch.Tensor, w: torch.Tensor):
        return (torch.tanh(x @ w) * x.sum(1, keepdim=True)).pow(2).mean()

    return torch.jit.script(loss)


def test_backward_through_a_scripted_function():
    x, w = torch.rand(8, 4), torch.rand(4, 4)
    grads = {}
    for device in ("cpu", "cuda"):
        scripted_loss = _scripted_loss()
        per_call = []
        for _ in range(CALLS):
            wd = w.detach().clone().to(device).requires_grad_()
            scripted_loss(x.to(device), wd).backward()
            assert wd.grad.device.type == device
            per_call.append(wd.grad.cpu())
        grads[device] = per_call
    for got, want in zip(grads["cuda"], grads["cpu"]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_mixing_devices_in_a_scripted_function_raises_cudas_error():
    @torch.jit.script
    def add(a: torch.Tensor, b: torch.Tensor):
        return a + b

    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        add(torch.rand(3, 2, device="cuda"), torch.rand(3, 2))


def test_turning_gpu_fusion_back_on_warns_and_keeps_it_off(caplog):
    with caplog.at_level("WARNING", logger="torchdevice"):
        torch._C._jit_override_can_fuse_on_gpu(True)
    assert not torch._C._jit_can_fuse_on_gpu()
    assert "GPU fusion stays off" in caplog.text
