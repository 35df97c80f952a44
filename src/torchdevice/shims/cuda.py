"""``torch.cuda`` for the emulated device: the runtime entry points a CPU build of torch lacks.

Each function answers as on a machine with ``device_count()`` real GPUs; errors for bad
devices are the ones real CUDA raises.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.cuda

from torchdevice import _C
from torchdevice.core import device as _device
from torchdevice.core.patch import REGISTRY

OWNER = "shims.cuda"
_TYPE = "cuda"

# The SM clock the properties report (an A100's boost clock), in kHz: cycles per millisecond,
# which torch.cuda._sleep's spin kernel is measured in.
CLOCK_RATE_KHZ = 1_410_000


class EmulatedUuid:
    """A device UUID as ``torch._C._CUuuid`` gives it: 16 ``bytes``, printed 8-4-4-4-12."""

    def __init__(self, index: int) -> None:
        # Stable per ordinal, never the nil UUID, and telling where it comes from ("torchdev").
        self.bytes = list(b"torchdev" + int(index).to_bytes(8, "big"))

    def __str__(self) -> str:
        h = "".join(f"{b:02x}" for b in self.bytes)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmulatedUuid) and other.bytes == self.bytes

    def __hash__(self) -> int:
        return hash(tuple(self.bytes))


class EmulatedDeviceProperties:
    """What ``torch.cuda.get_device_properties`` returns (``torch._C._CudaDeviceProperties`` on GPU builds)."""

    def __init__(self, index: int) -> None:
        major, minor = _device.requested_capability()
        self.name = os.environ.get("TORCHDEVICE_DEVICE_NAME", "torchdevice emulated GPU (CPU)")
        self.major = major
        self.minor = minor
        self.total_memory = int(_C.total_memory(_TYPE))
        self.multi_processor_count = os.cpu_count() or 1
        self.is_integrated = False
        self.is_multi_gpu_board = False
        self.max_threads_per_multi_processor = 2048
        self.max_threads_per_block = 1024
        self.regs_per_multiprocessor = 65536
        self.shared_memory_per_block = 49152
        self.shared_memory_per_block_optin = 49152
        self.shared_memory_per_multiprocessor = 65536
        self.warp_size = 32
        self.L2_cache_size = 0
        self.gcnArchName = "NVIDIA CUDA"
        self.uuid = EmulatedUuid(index)
        self.pci_bus_id = index
        self.pci_device_id = 0
        self.pci_domain_id = 0
        self.clock_rate = CLOCK_RATE_KHZ
        self.memory_clock_rate = 0
        self.memory_bus_width = 0

    # A GPU hands out one properties object per device, so two lookups compare equal.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmulatedDeviceProperties) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((self.name, self.pci_bus_id))

    def __repr__(self) -> str:
        return (
            f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor={self.minor}, "
            f"total_memory={self.total_memory // (1024 * 1024)}MB, "
            f"multi_processor_count={self.multi_processor_count}, uuid={self.uuid}, "
            f"pci_bus_id={self.pci_bus_id}, pci_device_id={self.pci_device_id}, "
            f"pci_domain_id={self.pci_domain_id}, L2_cache_size={self.L2_cache_size // (1024 * 1024)}MB)"
        )


def _device_index(device: Any, optional: bool = True) -> int:
    """torch.cuda's own device-argument parsing (int, str, torch.device, None)."""
    index = torch.cuda._utils._get_device_index(device, optional=optional, allow_cpu=False)
    return _C.current_device(_TYPE) if index is None or index < 0 else index


def _checked_index(device: Any) -> int:
    index = _device_index(device)
    _C.check_device(_TYPE, index)
    return index


# The library that holds the MPS fallback below (a registration lasts as long as its library).
_mps_hint_library: Any = None


def _refuse_mps_naming_the_switch(op: Any, *args: Any, **kwargs: Any) -> None:
    raise NotImplementedError(
        f"{op} on 'mps': this process emulates cuda, not mps, and PyTorch has one accelerator type per "
        "process; run MPS-written code with TORCHDEVICE_EMULATE=mps"
    )


def name_the_mps_switch() -> None:
    """Make the first op on 'mps' in a process that emulates cuda say how to emulate mps instead.

    Without it, MPS-written code (``device="mps"``) fails with the dispatcher's forty lines
    ("Could not run 'aten::empty.memory_format' with arguments from the 'MPS' backend"). A
    boxed fallback for the MPS dispatch key runs only for ops on mps tensors, none of which
    could run here: ops on cuda and cpu never reach it. Not where a real MPS device exists.
    """
    global _mps_hint_library
    if _mps_hint_library is not None or _device.real_mps_available():
        return
    library = torch.library.Library("_", "IMPL")  # "_": a fallback for every namespace
    library.fallback(_refuse_mps_naming_the_switch, dispatch_key="MPS")
    _mps_hint_library = library


def apply_patches() -> None:
    cuda = torch.cuda
    patch = REGISTRY.patch_function
    name_the_mps_switch()

    physical = _device.physical_device_count()
    visible = _VisibleDevices(physical)

    @patch(cuda, "is_available", owner=OWNER)
    def is_available() -> bool:
        return visible.count() > 0

    @patch(cuda, "device_count", owner=OWNER)
    def device_count() -> int:
        return visible.count()

    # Lightning/accelerate set PYTORCH_NVML_BASED_CUDA_CHECK=1, which routes through NVML.
    for name in ("_device_count_nvml", "_device_count_amdsmi"):
        if hasattr(cuda, name):
            REGISTRY.patch(cuda, name, _distinct(device_count, name), owner=OWNER)

    @patch(cuda, "_is_in_bad_fork", owner=OWNER)
    def _is_in_bad_fork() -> bool:
        return _fork.in_bad_fork

    @patch(cuda, "is_initialized", owner=OWNER)
    def is_initialized() -> bool:
        return bool(cuda._initialized) and not _fork.in_bad_fork

    @patch(cuda, "_lazy_init", owner=OWNER)
    def _lazy_init() -> None:
        # torch.cuda._lazy_init's steps, with the emulated device's torch._C._cuda_init.
        if is_initialized() or hasattr(cuda._tls, "is_initializing"):
            return
        with cuda._initialization_lock:
            if is_initialized():
                return
            if _fork.in_bad_fork:
                raise RuntimeError(
                    "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use "
                    "the 'spawn' start method"
                )
            if visible.count() == 0:
                raise RuntimeError("No CUDA GPUs are available")
            _C.lazy_init_device(_TYPE)  # torch._C._cuda_init's part: ATen's initialized flag
            cuda.default_generators = tuple(_C.default_generator(_TYPE, i) for i in range(_C.device_count(_TYPE)))
            cuda._tls.is_initializing = True  # queued calls may call _lazy_init again: they return at once
            seeds = getattr(cuda, "_lazy_seed_tracker", None)
            if seeds is not None:
                cuda._queued_calls.extend(calls for calls in seeds.get_calls() if calls)
            try:
                # Calls deferred before initialisation (manual_seed, ...) run now, as on a GPU.
                for queued_call, orig_traceback in cuda._queued_calls:
                    try:
                        queued_call()
                    except Exception as e:
                        msg = (f"CUDA call failed lazily at initialization with error: {e}\n\n"
                               f"CUDA call was originally invoked at:\n\n{''.join(orig_traceback)}")
                        raise cuda.DeferredCudaCallError(msg) from e
            finally:
                del cuda._tls.is_initializing
            cuda._initialized = True

    # torch.cuda.random and torch.cuda.memory imported these by name: theirs must be ours too
    # (torch's _lazy_init would call torch._C._cuda_init: missing on a CPU build, real CUDA on a wheel).
    for module in (cuda.random, cuda.memory):
        for fn in (_lazy_init, is_initialized):
            if hasattr(module, fn.__name__):
                REGISTRY.patch(module, fn.__name__, fn, owner=OWNER)

    if not _fork.handler_registered:
        _fork.handler_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)

    @patch(cuda, "current_device", owner=OWNER)
    def current_device() -> int:
        cuda._lazy_init()
        return _C.current_device(_TYPE)

    @patch(cuda, "set_device", owner=OWNER)
    def set_device(device: Any) -> None:
        index = torch.cuda._utils._get_device_index(device, optional=False, allow_cpu=False)
        if index >= 0:  # negative indices are ignored, as by torch.cuda.set_device
            _C.set_device(_TYPE, index)

    @patch(cuda, "_exchange_device", owner=OWNER)
    def _exchange_device(device: int) -> int:
        if device < 0:
            return -1
        previous = _C.current_device(_TYPE)
        if device != previous:
            _C.set_device(_TYPE, device)
        return previous

    REGISTRY.patch(cuda, "_maybe_exchange_device", _distinct(_exchange_device, "_maybe_exchange_device"), owner=OWNER)

    @patch(cuda, "synchronize", owner=OWNER)
    def synchronize(device: Any = None) -> None:
        # On the cpu runner kernels are synchronous and this returns at once; a device runner
        # (mps) queues them, and this waits for its queue.
        _C.synchronize(_TYPE, _checked_index(device))

    @patch(cuda, "get_device_properties", owner=OWNER)
    def get_device_properties(device: Any = None) -> EmulatedDeviceProperties:
        cuda._lazy_init()
        index = _device_index(device)
        if index < 0 or index >= _C.device_count(_TYPE):
            raise AssertionError("Invalid device id")  # torch.cuda's own check and message
        return EmulatedDeviceProperties(index)

    @patch(cuda, "get_device_name", owner=OWNER)
    def get_device_name(device: Any = None) -> str:
        return cuda.get_device_properties(device).name

    @patch(cuda, "get_device_capability", owner=OWNER)
    def get_device_capability(device: Any = None) -> tuple[int, int]:
        props = cuda.get_device_properties(device)
        return props.major, props.minor

    REGISTRY.patch(torch.backends.cuda, "is_built", _distinct(lambda: True, "is_built"), owner=OWNER)


class _VisibleDevices:
    """The device count as CUDA settles it: CUDA_VISIBLE_DEVICES is read when the program first
    asks for devices (device_count, is_available, initialization), not at ``import torch``, so a
    program may still set it after the import (PyTorch's own test_lazy_init does)."""

    def __init__(self, physical: int) -> None:
        self.physical = physical
        self.settled: int | None = None

    def count(self) -> int:
        if self.settled is None:
            self.settled = _device.visible_device_count(self.physical)
            _C.set_device_count(_TYPE, self.settled)
        return self.settled


class _ForkState:
    in_bad_fork = False
    handler_registered = False


_fork = _ForkState()


def _after_fork_in_child() -> None:
    # CUDA's context does not survive fork: a child of a process that initialized CUDA gets CUDA's
    # errors on its first CUDA use (torch's poison_fork, for the emulated device), while a child
    # forked before initialization may use cuda as the parent could.
    if torch.cuda._initialized and not _fork.in_bad_fork:
        _fork.in_bad_fork = True
        _C.poison_after_fork(_TYPE)


def _distinct(fn, name: str):
    """A distinct function object (dynamo registers handlers per object and rejects duplicates)."""

    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = fn.__doc__
    return wrapper
