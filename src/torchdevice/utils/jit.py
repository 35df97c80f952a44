"""TorchScript on the emulated GPU.

The interpreter runs scripted and traced code op by op through the dispatcher, so every op takes
the emulated route as in eager mode. What does not is TorchScript's GPU fusion: on a CUDA build
of torch, ``torch._C._jit_can_fuse_on_gpu()`` is True, and from a scripted function's second call
on, the profiling executor hands fusible ``cuda`` subgraphs to the tensor-expression fuser, which
generates CUDA C and compiles it with NVRTC ("NVRTC requires CUDA" on a machine without a GPU;
on a GPU it would launch a kernel on host memory). The emulated device is host memory, so it
takes the path a CUDA build without a usable GPU takes: no GPU fusion. Its subgraphs then run
unfused, op by op, exactly as the same program runs on the CPU (whose fusion is off by default).

If the user turns GPU fusion back on (``torch._C._jit_override_can_fuse_on_gpu(True)``), a
warning says why it stays off.
"""

from __future__ import annotations

import logging

import torch

from torchdevice.core.patch import REGISTRY

OWNER = "utils.jit"

logger = logging.getLogger("torchdevice")


def apply_patches() -> None:
    C = torch._C
    original_override = C._jit_override_can_fuse_on_gpu
    was_enabled = C._jit_can_fuse_on_gpu()
    original_override(False)

    @REGISTRY.patch_function(C, "_jit_override_can_fuse_on_gpu", owner=OWNER)
    def _jit_override_can_fuse_on_gpu(enabled: bool) -> None:
        if enabled:
            logger.warning(
                "torchdevice: TorchScript GPU fusion stays off: its kernels are CUDA C compiled with NVRTC, "
                "and the emulated device's memory is host memory (scripted code runs unfused, as on the CPU)"
            )
        original_override(False)

    # Recorded as a native change: the fuser's flag lives in C++; undoing restores it.
    REGISTRY.native(C, "_jit_can_fuse_on_gpu", undo=lambda: original_override(was_enabled), owner=OWNER)
