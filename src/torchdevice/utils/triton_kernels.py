"""Hand-written Triton kernels (``@triton.jit``) on the emulated GPU: they run on Triton's interpreter.

Triton compiles a kernel for the GPU behind its active driver, and the emulated ``cuda`` device
has none: its memory is host memory. Triton ships an interpreter (what ``TRITON_INTERPRET=1``
selects for every kernel) that runs a kernel's body with numpy, program by program, on host
copies of the arguments and writes the results back. This module gives a launch that interpreter
whenever one of its arguments is an emulated tensor, with no flag; other launches are Triton's:

* ``JITFunction.run`` (``kernel[grid](...)``; ``@triton.autotune`` and ``@triton.heuristics``
  call it too) runs an interpreted twin of the kernel's function, built once per kernel, when an
  argument is an emulated tensor. During that launch a ``@triton.jit`` helper the kernel calls
  runs interpreted as well, as it would under the flag;
* Triton's active driver is one for the emulated device (:class:`EmulatedDriver`): the
  autotuner times its configurations through it (``triton.testing.do_bench`` with
  ``torch.cuda`` events), and code that asks it for the device, as Triton's tutorials do
  (``triton.runtime.driver.active.get_active_torch_device()``), gets the emulated ``cuda:N``.
  Triton's NVIDIA driver cannot start here: it loads libcuda.

What the interpreter cannot run (compilation-only APIs such as ``kernel.warmup(...)``'s compiled
handle, and kernels that hit the interpreter's own limits) fails as it does under
``TRITON_INTERPRET=1``. Triton is imported by the program, never by torchdevice: the patches wait
for ``triton.runtime.jit`` to be imported.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from torchdevice.core.after_import import call_after_import
from torchdevice.core.patch import REGISTRY

OWNER = "utils.triton_kernels"
_TYPE = "cuda"
_JIT_MODULE = "triton.runtime.jit"

logger = logging.getLogger("torchdevice")

_interpreting = threading.local()  # depth of interpreted launches on this thread


def apply_patches() -> None:
    from torchdevice import plan

    if not plan.emulates_cuda or plan.runner != "cpu":
        # On an mps runner the memory is Apple's, which the interpreter's host copies cannot read.
        return
    call_after_import(_JIT_MODULE, _patch_triton, "triton: could not route Triton launches to the interpreter")


def _patch_triton(jit_module: Any) -> None:
    from triton.runtime import driver as driver_module

    jit_function = jit_module.JITFunction
    original_run = jit_function.run
    original_call = jit_function.__call__

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if not _has_emulated_tensor(args) and not _has_emulated_tensor(kwargs.values()):
            return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        interpreted = _interpreted_twin(self)
        _interpreting.depth = getattr(_interpreting, "depth", 0) + 1
        try:
            return interpreted.run(*args, grid=grid, warmup=warmup, **kwargs)
        finally:
            _interpreting.depth -= 1

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A @triton.jit helper called from an interpreted kernel's body runs interpreted too.
        if getattr(_interpreting, "depth", 0):
            return _interpreted_twin(self)(*args, **kwargs)
        return original_call(self, *args, **kwargs)

    run.__wrapped__ = original_run  # type: ignore[attr-defined]
    call.__wrapped__ = original_call  # type: ignore[attr-defined]
    REGISTRY.patch(jit_function, "run", run, owner=OWNER)
    REGISTRY.patch(jit_function, "__call__", call, owner=OWNER)
    driver_module.driver.set_active(EmulatedDriver())
    logger.debug("triton: launches with emulated tensors run on Triton's interpreter")


def _has_emulated_tensor(values: Any) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.device.type == _TYPE:
                return True
        elif isinstance(value, (tuple, list)):
            if _has_emulated_tensor(value):
                return True
        elif isinstance(getattr(value, "base", None), torch.Tensor):  # a host-side TensorDescriptor
            if value.base.device.type == _TYPE:
                return True
    return False


_twins_lock = threading.Lock()


def _interpreted_twin(jit_fn: Any) -> Any:
    """The InterpretedFunction of ``jit_fn``'s Python function, with its options and pre-run hooks."""
    twin = jit_fn.__dict__.get("_torchdevice_interpreted")
    if twin is not None:
        return twin
    from triton.runtime.interpreter import InterpretedFunction

    with _twins_lock:
        twin = jit_fn.__dict__.get("_torchdevice_interpreted")
        if twin is None:
            options = {name: getattr(jit_fn, attr, None) for name, attr in (
                ("version", "version"), ("do_not_specialize", "do_not_specialize"),
                ("do_not_specialize_on_alignment", "do_not_specialize_on_alignment"), ("debug", "debug"),
                ("noinline", "noinline"), ("repr", "_repr"), ("launch_metadata", "launch_metadata"))}
            twin = InterpretedFunction(jit_fn.fn, **options)
            # The same list object: hooks added to the kernel later apply to its twin too.
            twin.pre_run_hooks = jit_fn.pre_run_hooks
            jit_fn.__dict__["_torchdevice_interpreted"] = twin
    return twin


class _EmulatedUtils:
    """``driver.active.utils``: what Triton's NVIDIA utilities answer, read from the emulated device."""

    @staticmethod
    def get_device_properties(device: int) -> dict[str, int]:
        props = torch.cuda.get_device_properties(device)
        return {
            "max_shared_mem": int(getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)),
            "multiprocessor_count": int(props.multi_processor_count),
            "sm_clock_rate": int(getattr(props, "clock_rate", 0)),
            "mem_clock_rate": int(getattr(props, "memory_clock_rate", 0)),
            "mem_bus_width": int(getattr(props, "memory_bus_width", 0)),
            "max_num_regs": int(getattr(props, "regs_per_multiprocessor", 65536)),
            "warpSize": int(getattr(props, "warp_size", 32)),
        }


class EmulatedDriver:
    """Triton's driver interface (triton.backends.driver.GPUDriver's methods) for the emulated device."""

    # Triton flushes a GPU's L2 cache between timed runs by zeroing a 256 MB buffer; a host's
    # last-level cache is far smaller, and every timed run pays for the zeroing.
    _FLUSH_BYTES = 64 * 2**20

    def __init__(self) -> None:
        self.utils = _EmulatedUtils()

    @staticmethod
    def is_active() -> bool:
        return True

    def get_current_device(self) -> int:
        return torch.cuda.current_device()

    def set_current_device(self, device: int) -> None:
        torch.cuda.set_device(device)

    def get_current_stream(self, device: int | None = None) -> int:
        return torch.cuda.current_stream(device).cuda_stream

    def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
        return torch.cuda.get_device_capability(device)

    def get_current_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        major, minor = self.get_device_capability(self.get_current_device())
        return GPUTarget("cuda", major * 10 + minor, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device(_TYPE, self.get_current_device())

    def get_device_interface(self) -> Any:
        return torch.cuda

    def get_benchmarker(self) -> Any:
        from triton.testing import do_bench

        return do_bench

    def get_empty_cache_for_benchmark(self) -> torch.Tensor:
        return torch.empty(self._FLUSH_BYTES, dtype=torch.int8, device=_TYPE)

    def clear_cache(self, cache: torch.Tensor) -> None:
        cache.zero_()
