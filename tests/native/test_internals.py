"""Checks of the few places the native core reaches into PyTorch internals
(csrc/runtime/internals.h). If a torch upgrade changes those internals, these fail loudly."""

import subprocess
import sys

import torch

import torchdevice
import torchdevice.core.device


def test_hooks_answer_for_the_emulated_device():
    assert torchdevice.activation["hooks_route"] in ("registry", "vtable")
    assert torch.accelerator.current_accelerator() == torch.device("cuda")
    assert torch.Generator(device="cuda").device == torch.device("cuda", 0)


def _hooks_route(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_both_hooks_routes_work_in_fresh_processes():
    probe = (
        "x = torch.ones(2, device='cuda', requires_grad=True); (x * 2).sum().backward(); "
        "assert x.grad.is_cuda; print(torchdevice.activation['hooks_route'])"
    )
    # On a CUDA build of torch the hooks are always taken over after import (see __init__.py).
    expected_first = "vtable" if torchdevice.core.device.torch_has_cuda_build() else "registry"
    assert _hooks_route("import torchdevice, torch; " + probe) == expected_first
    assert _hooks_route("import torch, torchdevice; " + probe) == "vtable"


def test_relabelled_outputs_have_cuda_keys():
    y = torch.ones(2, device="cuda") + 1  # made by a CPU kernel, relabelled
    assert y.is_cuda and y.device == torch.device("cuda", 0)
    assert "AutogradCUDA" in torch._C._dispatch_keys(y).__repr__() or torch._C._dispatch_keys(y).has(
        torch._C.DispatchKey.AutogradCUDA
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert (y @ y.view(2, 1)).dtype == torch.bfloat16  # AutocastCUDA key present
