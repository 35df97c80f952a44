"""Backward passes run on the calling thread, as they do for CPU tensors.

PyTorch's autograd engine gives every accelerator device a worker thread and runs that device's
backward nodes there; CPU nodes run on the thread that called ``backward()``. On a GPU the worker
only launches kernels. Here the kernels are CPU kernels, and a CPU kernel's OpenMP/MKL work runs
in a thread team that belongs to the thread starting it: forward and optimizer on the main thread
and backward on the device thread keep two teams busy on the same cores. Measured on a 2-core
machine (bench/run.py workload e): the emulated backward was 1.1-1.6x the native CPU one, and
1.02x with the engine's own switch for this, ``torch.autograd.set_multithreading_enabled(False)``
(the same slowdown appears natively when a CPU backward is started from a second thread).

So every backward torchdevice sees runs with that switch off. What stays different from a GPU:
backward hooks run on the calling thread instead of a device thread.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd
import torch.autograd.graph

from torchdevice.core.patch import REGISTRY

OWNER = "ops.autograd"


def apply_patches() -> None:
    original = torch.autograd.graph._engine_run_backward
    is_enabled = torch._C._is_multithreading_enabled
    set_enabled = torch._C._set_multithreading_enabled

    def _engine_run_backward(t_outputs: Any, *args: Any, **kwargs: Any) -> Any:
        previous = is_enabled()
        set_enabled(False)
        try:
            return original(t_outputs, *args, **kwargs)
        finally:
            set_enabled(previous)

    _engine_run_backward.__torchdevice_patch__ = True  # type: ignore[attr-defined]
    _engine_run_backward.__wrapped__ = original  # type: ignore[attr-defined]
    # torch.autograd.backward/grad call the name bound in torch.autograd; other callers use graph's.
    REGISTRY.patch(torch.autograd.graph, "_engine_run_backward", _engine_run_backward, owner=OWNER)
    REGISTRY.patch(torch.autograd, "_engine_run_backward", _engine_run_backward, owner=OWNER)
