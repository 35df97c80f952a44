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

import os
import threading

import torch

from torchdevice.core.patch import REGISTRY

OWNER = "shims.mps"


def apply_patches() -> None:
    REGISTRY.patch(torch._C, "_has_mps", True, owner=OWNER)
    if hasattr(torch._C, "_cuda_getDeviceCount"):  # a CUDA build; a CPU build answers so already
        _no_cuda()
    _device_description()
    if hasattr(torch.mps, "current_stream"):  # torch >= 2.15: torch.mps streams
        _streams()


def _device_description() -> None:
    # torch.backends.mps.get_name() / get_core_count() (torch >= 2.15; harmless before): the
    # same name torch.cuda reports for an emulated GPU, and the host's cores.
    def get_name() -> str:
        return os.environ.get("TORCHDEVICE_DEVICE_NAME", "torchdevice emulated GPU (CPU)")

    def get_core_count() -> int:
        return os.cpu_count() or 1

    REGISTRY.patch(torch._C, "_mps_get_name", get_name, owner=OWNER)
    REGISTRY.patch(torch._C, "_mps_get_core_count", get_core_count, owner=OWNER)


class EmulatedStreamBase:
    """``torch._C._MPSStreamBase`` of the emulated device: a stream is its id; 0 is the default stream.

    The emulated device runs each op to completion when it is issued, so every stream is already
    synchronized with the host. Current streams are per thread, as torch's are.
    """

    def __new__(cls, *args: object, **kwargs: object) -> "EmulatedStreamBase":
        # Needed: torch.mps.Stream keeps the __new__ slot of the dummy base it was created over.
        return super().__new__(cls)

    def __init__(self, stream_id: int = 0) -> None:
        self._stream_id = int(stream_id)

    @property
    def stream_id(self) -> int:
        return self._stream_id

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmulatedStreamBase):
            return NotImplemented
        return self._stream_id == other._stream_id

    def __hash__(self) -> int:
        return hash(("mps", self._stream_id))


_current_stream = threading.local()


def _streams() -> None:
    """torch.mps.Stream and its current stream: a Linux build of torch has only a dummy base class."""

    def get_current_stream() -> EmulatedStreamBase:
        return EmulatedStreamBase(getattr(_current_stream, "stream_id", 0))

    def set_stream(stream: EmulatedStreamBase) -> None:
        if not isinstance(stream, EmulatedStreamBase):
            raise TypeError(f"expected a torch.mps.Stream, got {type(stream).__name__}")
        _current_stream.stream_id = stream.stream_id

    REGISTRY.patch(torch._C, "_mps_getCurrentStream", get_current_stream, owner=OWNER)
    REGISTRY.patch(torch._C, "_mps_setStream", set_stream, owner=OWNER)
    # torch.mps.Stream was defined over the dummy base when torch was imported: it gets this one.
    REGISTRY.patch(torch.mps.streams.Stream, "__bases__", (EmulatedStreamBase,), owner=OWNER)


def _no_cuda() -> None:
    cuda = torch.cuda

    def is_available() -> bool:
        return False

    def device_count() -> int:
        return 0

    REGISTRY.patch(cuda, "is_available", is_available, owner=OWNER)
    REGISTRY.patch(cuda, "device_count", device_count, owner=OWNER)
    REGISTRY.patch(torch._C, "_cuda_getDeviceCount", device_count, owner=OWNER)
