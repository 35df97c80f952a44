"""``torch.cuda`` memory management over the emulated allocator's real byte counters.

torch's own ``torch.cuda.memory`` functions stay in charge (their argument checks, the sorted
``OrderedDict`` of ``memory_stats``, ``memory_summary``'s table); this module supplies the
``torch._C._cuda_*`` bindings they call, reading the C++ allocator that backs every emulated
cuda tensor. The allocator caches nothing, so reserved bytes equal allocated bytes and
``empty_cache`` has nothing to release: both are the true state, not an approximation. With
``TORCHDEVICE_CUDA_CACHING=1`` the counts are those CUDA's caching allocator would have
(csrc/runtime/caching_model.h), and ``empty_cache`` releases the modelled cached segments.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.cuda
import torch.cuda.memory

from torchdevice import _C
from torchdevice.core.patch import REGISTRY
from torchdevice.ops.device import device_index

OWNER = "ops.memory"
_TYPE = "cuda"
# Allocations made through caching_allocator_alloc, kept alive by pointer until
# caching_allocator_delete (CUDA's allocator tracks raw blocks the same way).
_raw_blocks: dict[int, torch.Tensor] = {}


def _valid_device(device: int) -> int:
    # CUDACachingAllocator's assertValidDevice: the same check and wording.
    if not 0 <= device < _C.device_count(_TYPE):
        raise RuntimeError(f"Invalid device argument {device}: did you call init?")
    return device


def nested_memory_stats(device: int) -> dict[str, Any]:
    """``torch._C._cuda_memoryStats``: the allocator's flat counters as CUDA's nested dict.

    ``allocation.all.current`` becomes ``{"allocation": {"all": {"current": ...}}}``; torch's
    ``memory_stats`` flattens and sorts it again, exactly as for a real GPU.
    """
    flat = _C.memory_stats(_TYPE, _valid_device(device))
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _guarded_device(device: Any) -> int:
    # Runtime/NVML queries switch to the device first: a bad index is CUDA's "invalid device
    # ordinal" (torch.AcceleratorError), not the allocator's assertion.
    torch.cuda._lazy_init()
    index = device_index(device)
    _C.check_device(_TYPE, index)
    return index


def mem_get_info(device: Any = None) -> tuple[int, int]:
    """(free, total) bytes of the emulated device, as cudaMemGetInfo reports them."""
    return tuple(_C.mem_get_info(_TYPE, _guarded_device(device)))  # type: ignore[return-value]


def list_gpu_processes(device: Any = None) -> str:
    """nvidia-smi's view: this process, using the bytes it holds on the device."""
    index = _guarded_device(device)
    used_mb = device_memory_used(index) / (1024 * 1024)
    lines = [f"GPU:{index}", f"process {os.getpid():>10d} uses {used_mb:>12.3f} MB GPU memory"]
    return "\n".join(lines)


def device_memory_used(device: Any = None) -> int:
    """Bytes in use on the device as NVML reports them: this process's blocks and CUDA context."""
    free, total = mem_get_info(device)
    return int(total - free)


def apply_patches() -> None:
    C = torch._C
    patch = REGISTRY.patch_function

    @patch(C, "_cuda_memoryStats", owner=OWNER)
    def _cuda_memoryStats(device: int) -> dict[str, Any]:
        return nested_memory_stats(device)

    @patch(C, "_cuda_resetPeakMemoryStats", owner=OWNER)
    def _cuda_resetPeakMemoryStats(device: int) -> None:
        _C.reset_peak_memory_stats(_TYPE, _valid_device(device))

    @patch(C, "_cuda_resetAccumulatedMemoryStats", owner=OWNER)
    def _cuda_resetAccumulatedMemoryStats(device: int) -> None:
        _C.reset_accumulated_memory_stats(_TYPE, _valid_device(device))

    @patch(C, "_cuda_emptyCache", owner=OWNER)
    def _cuda_emptyCache() -> None:
        # Freed blocks go straight back to the host; the caching model releases its segments.
        _C.empty_cache(_TYPE)

    @patch(C, "_cuda_setMemoryFraction", owner=OWNER)
    def _cuda_setMemoryFraction(fraction: float, device: int) -> None:
        _C.set_memory_fraction(_TYPE, float(fraction), _valid_device(device))

    @patch(C, "_cuda_getMemoryFraction", owner=OWNER)
    def _cuda_getMemoryFraction(device: int) -> float:
        return _C.memory_fraction(_TYPE, _valid_device(device))

    @patch(C, "_cuda_cudaCachingAllocator_raw_alloc", owner=OWNER)
    def _cuda_cudaCachingAllocator_raw_alloc(size: int, stream: int) -> int:
        # A byte tensor on the current device owns the block, so the counters see it.
        block = torch.empty(int(size), dtype=torch.uint8, device=torch.device(_TYPE, _C.current_device(_TYPE)))
        ptr = block.data_ptr()
        _raw_blocks[ptr] = block
        return ptr

    @patch(C, "_cuda_cudaCachingAllocator_raw_delete", owner=OWNER)
    def _cuda_cudaCachingAllocator_raw_delete(ptr: int) -> None:
        if ptr == 0:  # CUDA's raw_delete ignores null, like free()
            return
        if _raw_blocks.pop(int(ptr), None) is None:
            raise RuntimeError("invalid device pointer: " + hex(int(ptr)))

    @patch(C, "_cuda_cudaCachingAllocator_is_enabled", owner=OWNER)
    def _cuda_cudaCachingAllocator_is_enabled() -> bool:
        return True

    @patch(C, "_cuda_cudaCachingAllocator_enable", owner=OWNER)
    def _cuda_cudaCachingAllocator_enable(value: bool) -> None:
        # Nothing is cached either way; the flag only changes caching, never the counts.
        return None

    @patch(C, "_cuda_getAllocatorBackend", owner=OWNER)
    def _cuda_getAllocatorBackend() -> str:
        return "native"

    # mem_get_info goes through cudart's cudaMemGetInfo; answer from the allocator directly.
    for module in (torch.cuda, torch.cuda.memory):
        REGISTRY.patch(module, "mem_get_info", mem_get_info, owner=OWNER)
        REGISTRY.patch(module, "list_gpu_processes", list_gpu_processes, owner=OWNER)
    REGISTRY.patch(torch.cuda, "device_memory_used", device_memory_used, owner=OWNER)
