"""The ``torch.cuda`` runtime on the emulated device, one module per area.

Each module's ``apply_patches()`` registers its patches in ``core.patch.REGISTRY`` under its
own owner name; :func:`apply_patches` runs them in dependency order (device bindings first:
the others call ``torch.cuda.current_device`` and friends through them).
"""

from __future__ import annotations

from torchdevice.ops import (amp, autograd, comm, device, distributed, dtensor_random, extensions, graphs, host, legacy_types,
                             memory, memory_history, profiler, random, storage, streams)

MODULES = (device, memory, memory_history, storage, legacy_types, streams, graphs, random, amp, autograd, host, comm, distributed,
           dtensor_random, extensions, profiler)


def apply_patches() -> None:
    for module in MODULES:
        module.apply_patches()
    # torch.compile's routing to inductor's C++ backend (lazy: inductor is imported on first use).
    from torchdevice.utils import compile as _compile
    from torchdevice.utils import jit as _jit
    from torchdevice.utils import triton_kernels as _triton_kernels

    _compile.apply_patches()
    # Hand-written Triton kernels on Triton's interpreter (lazy: when the program imports Triton).
    _triton_kernels.apply_patches()
    # TorchScript: no GPU fusion (CUDA C) for the emulated device.
    _jit.apply_patches()
