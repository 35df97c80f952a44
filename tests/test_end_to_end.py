"""Acceptance: CUDA-written training code gives the CPU's results bit for bit, and fails like CUDA.

The training loops below are written as for a GPU (``.cuda()``, ``torch.autocast('cuda')``) and
run on the emulated device; the same loop on the CPU, from the same initial weights and data, must
give *equal* tensors (torch.equal, not allclose): every emulated op runs the CPU kernel.
"""

from __future__ import annotations

import copy
import json

import numpy  # noqa: F401  (Tensor.numpy() needs it; fail here if it is missing)
import pytest

import torch
import torch.nn.functional as F
from torch import nn
from tests.conftest import REPO_ROOT, describe

SAME_DEVICE = "Expected all tensors to be on the same device, but found at least two devices, {} and {}!"


# ------------------------------------------------------------------------- training loops


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def make_batches(steps: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 16, generator=generator), torch.randn(32, 4, generator=generator)) for _ in range(steps)]


def train(model: nn.Module, batches, device: str, optimizer_impl: str, amp: bool) -> dict[str, list[torch.Tensor]]:
    """One training loop, written once for both devices; returns everything on the CPU."""
    model = copy.deepcopy(model)
    model = model.cuda() if device == "cuda" else model.cpu()
    kwargs = {"foreach": True} if optimizer_impl == "foreach" else {"fused": True} if optimizer_impl == "fused" else {"foreach": False}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2, **kwargs)
    losses, grad_norms = [], []
    for x, y in batches:
        x, y = (x.cuda(), y.cuda()) if device == "cuda" else (x, y)
        optimizer.zero_grad(set_to_none=True)
        # The CUDA and CPU autocast policies agree on linear (bf16), relu (as is) and mse_loss
        # (fp32). They differ elsewhere (layer_norm, softmax, sum: fp32 only under CUDA), and the
        # emulated device follows CUDA's: see test_autocast_follows_the_cuda_policy.
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = F.mse_loss(model(x), y)
        loss.backward()
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0))
        optimizer.step()
        losses.append(loss.detach())
    if device == "cuda":
        torch.cuda.synchronize()
        assert all(p.is_cuda for p in model.parameters())
        assert all(t.is_cuda for t in losses + grad_norms)
    state = [t for s in optimizer.state.values() for t in (s["exp_avg"], s["exp_avg_sq"], s["step"])]
    return {
        "params": [p.detach().cpu() for p in model.parameters()],
        "grads": [p.grad.cpu() for p in model.parameters()],
        "losses": [t.cpu() for t in losses],
        "grad_norms": [t.cpu() for t in grad_norms],
        "optimizer_state": [t.cpu() for t in state],
    }


@pytest.mark.parametrize(
    ("optimizer_impl", "amp"),
    [("foreach", True), ("fused", True), ("foreach", False), ("fused", False), ("for-loop", False)],
    ids=["foreach-autocast-bf16", "fused-autocast-bf16", "foreach-fp32", "fused-fp32", "for-loop-fp32"],
)
def test_cuda_training_equals_cpu(optimizer_impl, amp):
    model, batches = make_model(), make_batches()
    on_cuda = train(model, batches, "cuda", optimizer_impl, amp)
    on_cpu = train(model, batches, "cpu", optimizer_impl, amp)
    for key, cuda_values in on_cuda.items():
        assert len(cuda_values) == len(on_cpu[key]) > 0, key
        for i, (a, b) in enumerate(zip(cuda_values, on_cpu[key])):
            assert a.dtype == b.dtype and torch.equal(a, b), f"{key}[{i}] differs"
    assert not torch.equal(on_cuda["params"][0], model[0].weight.detach()), "training changed nothing"


def test_autocast_follows_the_cuda_policy():
    """Under torch.autocast('cuda'), dtypes are the ones a GPU gives, which are not always the CPU's."""
    x = torch.randn(4, 8, device="cuda")
    w = torch.randn(8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = F.linear(x, w)
        assert h.dtype == torch.bfloat16
        assert F.layer_norm(h, (8,)).dtype == torch.float32  # bf16 under torch.autocast('cpu')
        assert F.softmax(h, dim=-1).dtype == torch.float32  # bf16 under torch.autocast('cpu')
        assert F.relu(h).dtype == torch.bfloat16


def test_example_script_trains(run_cli):
    proc = run_cli(["run", str(REPO_ROOT / "examples" / "train_cuda_mlp.py"), "--steps", "40"])
    assert proc.returncode == 0, describe(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: torchdevice emulated GPU (CPU)")
    assert lines[-1].startswith("done: 40 steps in ")
    first, last = float(lines[1].split()[-1]), float(lines[-1].split("final loss ")[1].split(",")[0])
    assert last < first


# ------------------------------------------------------------------------------ device errors


def test_cuda_then_cpu_tensor_is_a_device_error():
    with pytest.raises(RuntimeError) as info:
        torch.ones(2, device="cuda") + torch.ones(2)
    assert str(info.value) == SAME_DEVICE.format("cuda:0", "cpu")


def test_cpu_then_cuda_tensor_is_a_device_error():
    # On a GPU, TensorIterator reports the common device (the first non-CPU one) first, whatever
    # the argument order.
    with pytest.raises(RuntimeError) as info:
        torch.ones(2) + torch.ones(2, device="cuda")
    assert str(info.value) == SAME_DEVICE.format("cuda:0", "cpu")


def test_zero_dim_cpu_tensor_mixes_with_cuda():
    x = torch.arange(3.0, device="cuda")
    for result in (x + torch.tensor(2.0), torch.tensor(2.0) * x, x.add_(torch.tensor(1.0))):
        assert result.device == torch.device("cuda", 0)
    assert torch.equal(x.cpu(), torch.tensor([1.0, 2.0, 3.0]))


def test_two_emulated_devices_do_not_mix(run_code):
    proc = run_code(
        """
        import json, torchdevice, torch
        a, b = torch.ones(2, device="cuda:0"), torch.ones(2, device="cuda:1")
        messages = []
        for f in (lambda: a + b, lambda: b + a):
            try:
                f()
            except RuntimeError as exc:
                messages.append(str(exc))
        print(json.dumps({"messages": messages, "moved": str((a + b.to("cuda:0")).device)}))
        """,
        env={"TORCHDEVICE_DEVICE_COUNT": "2"},
    )
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout)
    assert report["messages"] == [SAME_DEVICE.format("cuda:0", "cuda:1"), SAME_DEVICE.format("cuda:1", "cuda:0")]
    assert report["moved"] == "cuda:0"


def test_numpy_of_a_cuda_tensor():
    with pytest.raises(TypeError) as info:
        torch.ones(2, device="cuda").numpy()
    assert str(info.value) == (
        "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."
    )
    assert torch.ones(2, device="cuda").cpu().numpy().tolist() == [1.0, 1.0]


def test_tensor_on_a_missing_device():
    with pytest.raises(torch.AcceleratorError) as info:
        torch.ones(1, device="cuda:7")
    assert str(info.value).startswith("CUDA error: invalid device ordinal")


def test_set_device_to_a_missing_device():
    with pytest.raises(torch.AcceleratorError) as info:
        torch.cuda.set_device(7)
    assert str(info.value).startswith("CUDA error: invalid device ordinal")
    assert torch.cuda.current_device() == 0
