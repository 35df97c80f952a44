"""``torch.mps`` for the emulated mps device.

torch's own ``torch.mps`` and ``torch.backends.mps`` work unchanged once two things hold: the
native core's MPS hooks answer ``torch._C._mps_*`` (synchronize, seeds, memory figures, events,
profiler), and ``torch._C._has_mps`` says the build has MPS (it gates ``is_built()``,
``device_count()`` and the default generator).

PyTorch has one accelerator per process, and on a Mac, where MPS code runs, there is no CUDA.
The native core switches the CUDA hooks off (ATen's view: no CUDA, MPS is the accelerator); on a
CUDA build of torch ``torch.cuda`` asks the driver itself, so there it is told the same here:
``torch.cuda.is_available()`` is False and ``device_count()`` 0, even on a machine with a GPU.
"""

from __future__ import annotations

import torch

from torchdevice.core.patch import REGISTRY

OWNER = "shims.mps"


def apply_patches() -> None:
    REGISTRY.patch(torch._C, "_has_mps", True, owner=OWNER)
    if hasattr(torch._C, "_cuda_getDeviceCount"):  # a CUDA build; a CPU build answers so already
        _no_cuda()


def _no_cuda() -> None:
    cuda = torch.cuda

    def is_available() -> bool:
        return False

    def device_count() -> int:
        return 0

    REGISTRY.patch(cuda, "is_available", is_available, owner=OWNER)
    REGISTRY.patch(cuda, "device_count", device_count, owner=OWNER)
    REGISTRY.patch(torch._C, "_cuda_getDeviceCount", device_count, owner=OWNER)
