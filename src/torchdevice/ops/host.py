"""Host-side ``torch.cuda`` odds and ends: cudart, NVTX, IPC, NVML-style sensors, sync debug mode.

Pinned memory needs nothing here: the C++ CUDA hooks provide the pinned host allocator, so
``pin_memory()``/``is_pinned()`` and ``DataLoader(pin_memory=True)`` use it directly.

What real CUDA answers through a driver or a profiler tool is answered as a GPU machine with no
tool attached answers it (NVTX returns NVTX's "no tool" codes). The NVML sensors have no
emulated counterpart and report 0 (documented in docs/capability-honesty.md).
"""

from __future__ import annotations

import enum
import threading
from typing import Any

import torch
import torch.cuda
import torch.autograd.profiler
import torch.cuda.nvtx

from torchdevice import _C
from torchdevice.core.logger import warn_unfaithful
from torchdevice.core.patch import REGISTRY
from torchdevice.ops.device import device_index

OWNER = "ops.host"
_TYPE = "cuda"

# nvtxRangePushA/nvtxRangePop return NVTX_NO_PUSH_POP_TRACKING when no tool (nsys, ncu) is
# attached to the process, which is the state of every process here.
NVTX_NO_PUSH_POP_TRACKING = -2


def _nvtx_message(function: str, msg: Any, returns: str) -> str:
    """The ``const char*`` argument of an NVTX binding: str, bytes or None (NULL), as pybind11 takes it."""
    if msg is None or isinstance(msg, str):
        return msg or ""
    if isinstance(msg, bytes):
        return msg.decode("utf-8", "replace")
    raise incompatible_arguments(function, f"(arg0: str) -> {returns}", msg)


def incompatible_arguments(function: str, signature: str, *args: Any) -> TypeError:
    """The TypeError pybind11 raises for a call to a torch binding that no overload accepts."""
    return TypeError(
        f"{function}(): incompatible function arguments. The following argument types are supported:\n"
        f"    1. {signature}\n\nInvoked with: {', '.join(repr(a) for a in args)}"
    )


class _NVTX:
    """``torch._C._nvtx`` as it behaves on a GPU machine with no profiling tool attached.

    While torch.profiler runs, NVTX ranges become its user annotations (``record_function``
    ranges), so they show in its table and trace, where Nsight would show them on a GPU.
    """

    def __init__(self) -> None:
        self._local = threading.local()  # per thread, as NVTX keeps its push/pop stack
        self._started: dict[int, Any] = {}
        self._next_id = 1

    def _stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    @staticmethod
    def _enter(msg: str) -> Any:
        if not torch.autograd.profiler._is_profiler_enabled:
            return None
        return torch.ops.profiler._record_function_enter_new(msg, None)

    @staticmethod
    def _exit(handle: Any) -> None:
        if handle is not None:
            torch.ops.profiler._record_function_exit._RecordFunction(handle)

    def rangePushA(self, msg: str) -> int:
        self._stack().append(self._enter(_nvtx_message("rangePushA", msg, "int")))
        return NVTX_NO_PUSH_POP_TRACKING

    def rangePop(self) -> int:
        stack = self._stack()
        if stack:
            self._exit(stack.pop())
        return NVTX_NO_PUSH_POP_TRACKING

    def rangeStartA(self, msg: str) -> int:
        handle = self._enter(_nvtx_message("rangeStartA", msg, "int"))
        if handle is None:
            return 0  # nvtxRangeId_t 0: the id NVTX hands out without a tool
        range_id, self._next_id = self._next_id, self._next_id + 1
        self._started[range_id] = handle
        return range_id

    def rangeEnd(self, range_id: int) -> None:
        if not isinstance(range_id, int) or range_id < 0:  # an nvtxRangeId_t (uint64_t)
            raise incompatible_arguments("rangeEnd", "(arg0: int) -> None", range_id)
        self._exit(self._started.pop(range_id, None))

    def markA(self, msg: str) -> None:
        self._exit(self._enter(_nvtx_message("markA", msg, "None")))

    def deviceRangeStart(self, msg: str, stream: int = 0) -> object:
        return None

    def deviceRangeEnd(self, range_handle: object, stream: int = 0) -> None:
        return None


class cudaError(enum.IntEnum):
    """The cudaError_t values torch.cuda.check_error/CudaError consult."""

    success = 0
    invalid_value = 1
    memory_allocation = 2
    initialization_error = 3
    not_ready = 600


_ERROR_STRINGS = {
    cudaError.success: "no error",
    cudaError.invalid_value: "invalid argument",
    cudaError.memory_allocation: "out of memory",
    cudaError.initialization_error: "initialization error",
    cudaError.not_ready: "device not ready",
}


class _Cudart:
    """``torch.cuda.cudart()``: the CUDA runtime calls torch and common scripts make.

    Every call succeeds (execution is synchronous and memory is host memory) and returns
    ``cudaError.success`` where the runtime returns an error code.
    """

    cudaError = cudaError

    def cudaGetErrorString(self, error: int) -> str:
        try:
            return _ERROR_STRINGS[cudaError(int(error))]
        except ValueError:
            return "unrecognized error code"

    def cudaProfilerStart(self) -> int:
        return cudaError.success

    def cudaProfilerStop(self) -> int:
        return cudaError.success

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> int:
        # The range counts as pinned (tensor.is_pinned()) until unregistered.
        return _C.host_register(int(ptr), int(size))

    def cudaHostUnregister(self, ptr: int) -> int:
        return _C.host_unregister(int(ptr))

    def cudaStreamCreate(self, ptr: int) -> int:
        return cudaError.success

    def cudaStreamDestroy(self, ptr: int) -> int:
        return cudaError.success

    def cudaMemGetInfo(self, device: int) -> tuple[int, int]:
        return tuple(_C.mem_get_info(_TYPE, int(device)))  # type: ignore[return-value]


class emit_nvtx(torch.autograd.profiler.emit_nvtx):
    """``torch.autograd.profiler.emit_nvtx`` without the NVTX profiler state.

    torch's C++ profiler refuses ProfilerState.NVTX on a CPU build ("PyTorch was compiled
    without CUDA"). With no NVTX tool attached, which is always the case here, the ranges it
    would emit go nowhere on a GPU machine too, so the context keeps its checks and does nothing
    else.
    """

    def __enter__(self):
        if not self.enabled:
            return None
        if self.entered:
            raise RuntimeError("NVTX annotation context manager is not reentrant")
        self.entered = True
        torch.cuda.synchronize()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        if not self.enabled:
            return None
        torch.cuda.synchronize()
        return False


_sync_debug_mode = 0  # torch.cuda.set_sync_debug_mode: 0 default, 1 warn, 2 error


def _sensor(device: Any = None) -> int:
    # Validate the device as NVML would (an index it knows), then report the idle reading.
    torch.cuda._lazy_init()
    _C.check_device(_TYPE, device_index(device))
    warn_unfaithful(
        "nvml-sensors",
        "torch.cuda utilization/memory_usage/temperature/power_draw/clock_rate read 0: "
        "NVML sensors have no emulated counterpart",
    )
    return 0


def apply_patches() -> None:
    C = torch._C
    cuda = torch.cuda
    patch = REGISTRY.patch_function

    # torch.cuda.nvtx bound `_nvtx` to a stub that raises "NVTX functions not installed".
    REGISTRY.patch(torch.cuda.nvtx, "_nvtx", _NVTX(), owner=OWNER)

    original_emit_nvtx = torch.autograd.profiler.emit_nvtx
    for module in (torch.autograd.profiler, torch.autograd):
        if getattr(module, "emit_nvtx", None) is original_emit_nvtx:
            REGISTRY.patch(module, "emit_nvtx", emit_nvtx, owner=OWNER)

    # cudart() returns the module-level _cudart that a CUDA build's _lazy_init loads.
    REGISTRY.patch(cuda, "_cudart", _Cudart(), owner=OWNER)

    @patch(C, "_cuda_ipc_collect", owner=OWNER)
    def _cuda_ipc_collect() -> None:
        # No CUDA IPC exists between emulated processes, so nothing waits to be collected.
        return None

    @patch(C, "_cuda_set_sync_debug_mode", owner=OWNER)
    def _cuda_set_sync_debug_mode(debug_mode: int) -> None:
        global _sync_debug_mode
        _sync_debug_mode = int(debug_mode)

    @patch(C, "_cuda_get_sync_debug_mode", owner=OWNER)
    def _cuda_get_sync_debug_mode() -> int:
        return _sync_debug_mode

    # No cuBLAS/cuSOLVER library is loaded (matmuls run on the host BLAS), so there is no
    # handle to hand out; raising says so instead of inventing a pointer.
    for name, library in (("_cuda_getCurrentBlasHandle", "cuBLAS"), ("_cuda_getCurrentSolverHandle", "cuSOLVER")):
        REGISTRY.patch(C, name, _unavailable(name, f"the emulated device has no {library} handle: its kernels run on the host"), owner=OWNER)

    # No cuBLAS workspaces are allocated (matmuls run on the host BLAS); the calls that size and
    # free them (setBlasBackendsToDefaultFinally, users resetting CUBLAS_WORKSPACE_CONFIG) have
    # nothing to do. A CUDA build has its own, which touch no GPU.
    for name in ("_cuda_resetCublasWorkspaceSize", "_cuda_resetCublasLtWorkspaceSize", "_cuda_clearCublasWorkspaces"):
        if not hasattr(C, name):
            REGISTRY.patch(C, name, _nothing_to_do(name), owner=OWNER)

    # The pinned host allocator of the native core counts like CUDA's host allocator.
    from torchdevice import _C as native

    # The pinned allocator keeps freed blocks for reuse, as CUDA's does; torch.cuda.graph()
    # and users empty it through this (on a CUDA build, torch's would empty CUDA's allocator).
    REGISTRY.patch(C, "_host_emptyCache", _distinct_call(native.host_empty_cache, "_host_emptyCache"), owner=OWNER)
    REGISTRY.patch(C, "_cuda_hostMemoryStats", _distinct_call(native.host_memory_stats, "_cuda_hostMemoryStats"), owner=OWNER)
    REGISTRY.patch(C, "_cuda_resetAccumulatedHostMemoryStats",
                   _distinct_call(native.reset_accumulated_host_memory_stats, "_cuda_resetAccumulatedHostMemoryStats"), owner=OWNER)
    REGISTRY.patch(C, "_cuda_resetPeakHostMemoryStats",
                   _distinct_call(native.reset_peak_host_memory_stats, "_cuda_resetPeakHostMemoryStats"), owner=OWNER)

    # Run-time compilation of CUDA C++ (NVRTC) has nothing to compile for on the host.
    name = "_cuda_jiterator_compile_and_launch_kernel"
    why = "torch.cuda.jiterator compiles CUDA C++ with NVRTC, which the emulated device does not have"
    REGISTRY.patch(C, name, _unavailable(name, why), owner=OWNER)

    # TunableOp picks among GPU GEMM kernels; the host BLAS offers none, so it is off, can be
    # switched off, and refuses to be switched on (a silent "on" would claim tuning that never runs).
    for name in ("_cuda_tunableop_is_enabled", "_cuda_tunableop_tuning_is_enabled", "_cuda_record_untuned_is_enabled"):
        REGISTRY.patch(C, name, _always_false(name), owner=OWNER)
    for name in ("_cuda_tunableop_enable", "_cuda_tunableop_tuning_enable", "_cuda_record_untuned_enable"):
        REGISTRY.patch(C, name, _off_only(name), owner=OWNER)

    # NVML sensor readings (torch reads them through pynvml, absent here).
    for name in ("utilization", "memory_usage", "temperature", "power_draw", "clock_rate"):
        REGISTRY.patch(cuda, name, _named_sensor(name), owner=OWNER)


def _named_sensor(name: str):
    # A distinct function per name: dynamo registers handlers per function object.
    def sensor(device: Any = None) -> int:
        return _sensor(device)

    sensor.__name__ = sensor.__qualname__ = name
    sensor.__doc__ = f"``torch.cuda.{name}``: NVML has no emulated counterpart; 0 (see docs/capability-honesty.md)."
    return sensor


def _unavailable(name: str, why: str):
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"torchdevice: {why}")

    unavailable.__name__ = unavailable.__qualname__ = name
    return unavailable


def _nothing_to_do(name: str):
    def call() -> None:
        return None

    call.__name__ = call.__qualname__ = name
    return call


def _always_false(name: str):
    def query() -> bool:
        return False

    query.__name__ = query.__qualname__ = name
    return query


def _off_only(name: str):
    def switch(value: bool) -> None:
        if value:
            raise RuntimeError(
                "torchdevice: TunableOp tunes GPU GEMM kernels; the emulated device's host BLAS has none to tune"
            )

    switch.__name__ = switch.__qualname__ = name
    return switch


def _distinct_call(fn, name: str):
    """A Python function (a distinct object per binding) calling a native one."""

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call
