"""Backward runs on the calling thread for emulated tensors, as it does for CPU tensors."""

import threading

import torch


def hook_thread(device: str) -> int:
    seen = []
    w = torch.ones(3, device=device, requires_grad=True)
    w.register_hook(lambda grad: seen.append(threading.get_ident()))
    (w * 2).sum().backward()
    return seen[0]


def test_backward_hooks_run_on_the_calling_thread():
    # On a GPU they would run on the device's autograd thread; here that thread's CPU kernels would
    # compete with the main thread's OpenMP team (see torchdevice/ops/autograd.py).
    assert hook_thread("cuda") == threading.get_ident() == hook_thread("cpu")


def test_grad_also_runs_on_the_calling_thread():
    seen = []
    w = torch.ones(3, device="cuda", requires_grad=True)
    w.register_hook(lambda grad: seen.append(threading.get_ident()) or grad)
    (g,) = torch.autograd.grad((w * w).sum(), w)
    assert seen == [threading.get_ident()] and torch.equal(g.cpu(), torch.full((3,), 2.0))


def test_multithreading_setting_is_restored():
    assert torch.autograd.is_multithreading_enabled()
    w = torch.ones(3, device="cuda", requires_grad=True)
    (w * 2).sum().backward()
    assert torch.autograd.is_multithreading_enabled()
    with torch.autograd.set_multithreading_enabled(False):
        (w * 2).sum().backward()
        assert not torch.autograd.is_multithreading_enabled()


def test_patch_is_registered():
    from torchdevice.core.patch import REGISTRY

    names = {p.qualname for p in REGISTRY if p.owner == "ops.autograd"}
    assert names == {"torch.autograd.graph._engine_run_backward", "torch.autograd._engine_run_backward"}
