"""``torch.cuda`` streams and events on the emulated device.

A CPU build of torch defines ``torch.cuda.Stream``/``Event`` over dummy bases that refuse to be
instantiated. Here they are subclasses of ``torch.Stream``/``torch.Event`` (as on a CUDA build,
where ``_CudaStreamBase``/``_CudaEventBase`` derive from them), so every call goes through the
emulated C++ guard: per-thread current streams, events that record a host timestamp.

Kernels run synchronously, so work "submitted to a stream" has finished when the call returns:
``query()`` is True, ``synchronize``/``wait_*`` return at once, except behind
``torch.cuda._sleep``, whose spin kernel keeps the stream busy for its cycles as on a GPU
(csrc/runtime/timeline.h). Everything observable through
the API still holds: stream identity and equality, the current stream per device and thread,
event recording order, timing in milliseconds, and CUDA's errors for misuse (elapsed time
without ``enable_timing`` or before recording).

torch's own ``current_stream``/``default_stream``/``set_stream``/``stream``/``StreamContext``
stay in charge; they call the ``torch._C._cuda_*`` stream bindings defined here.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch
import torch.cuda
import torch.cuda.streams

from torchdevice import _C
from torchdevice.core.patch import REGISTRY
from torchdevice.ops.device import device_index as _resolve_index

OWNER = "ops.streams"
_TYPE = "cuda"
_CUDA_TYPE_ENUM = 1  # c10::DeviceType::CUDA, what Stream.device_type reports

# CUDA's stream priorities as torch exposes them: 0 is the default (lowest), lower numbers are
# higher priorities, and torch caps the range at max_compile_time_stream_priorities (4) levels.
LEAST_PRIORITY = 0
GREATEST_PRIORITY = -3

# Priority of each stream created here, by (device, stream id): Stream objects are rebuilt from
# ids (current_stream() returns a new object), so the priority must live with the id.
_priorities: dict[tuple[int, int], int] = {}
_priorities_lock = threading.Lock()


def _clamp_priority(priority: int) -> int:
    # "If the value falls outside of the allowed priority range, it will automatically be
    # mapped to the nearest valid priority" (torch.cuda.Stream's documentation).
    return max(GREATEST_PRIORITY, min(LEAST_PRIORITY, int(priority)))


class Stream(torch.Stream):
    r"""Wrapper around a CUDA stream (see ``torch.cuda.Stream``), executing synchronously.

    Args:
        device (torch.device or int, optional): the stream's device; ``None`` or a negative
            integer means the current device.
        priority (int, optional): lower numbers are higher priorities; out-of-range values are
            mapped to the nearest valid priority (0 to -3).
    """

    def __new__(cls, device: Any = None, priority: int = 0, **kwargs: Any) -> "Stream":
        if "stream_id" in kwargs and "device_index" in kwargs:
            # Rebuilding a Python object for an existing stream (current_stream() and friends).
            return super().__new__(cls, priority=priority, **kwargs)
        if "stream_ptr" in kwargs:
            # An external cudaStream_t, as _CudaStreamBase accepts it (ExternalStream uses this).
            stream_ptr = int(kwargs.pop("stream_ptr"))
            with torch.cuda.device(device):
                index = torch.cuda.current_device()
            return super().__new__(cls, stream_id=stream_ptr, device_index=index, device_type=_CUDA_TYPE_ENUM)
        if kwargs:
            name = next(iter(kwargs))
            raise TypeError(f"Stream() got an unexpected keyword argument '{name}'")
        # torch.cuda.device raises CUDA's own errors for an invalid device.
        with torch.cuda.device(device):
            index = torch.cuda.current_device()
            stream = super().__new__(cls, device=torch.device(_TYPE, index), priority=priority)
        priority = _clamp_priority(priority)
        if priority != LEAST_PRIORITY:  # only the exceptions are stored: most streams are default
            with _priorities_lock:
                _priorities[(index, stream.stream_id)] = priority
        return stream

    @staticmethod
    def priority_range() -> tuple[int, int]:
        """(least, greatest) stream priority, as ``cudaDeviceGetStreamPriorityRange`` via torch."""
        return LEAST_PRIORITY, GREATEST_PRIORITY

    @property
    def priority(self) -> int:
        with _priorities_lock:
            return _priorities.get((self.device_index, self.stream_id), LEAST_PRIORITY)

    @property
    def cuda_stream(self) -> int:
        # The cudaStream_t handle as an integer: 0 for the default stream as in CUDA; other
        # streams are identified by their emulated id (never dereferenced by anyone).
        return int(self.stream_id)

    def wait_event(self, event: torch.Event) -> None:
        event.wait(self)

    def wait_stream(self, stream: torch.Stream) -> None:
        self.wait_event(stream.record_event())

    def record_event(self, event: torch.Event | None = None) -> torch.Event:
        # Through event.record: torch.Stream.record_event accepts only exact torch.Event objects.
        if event is None:
            event = Event()
        event.record(self)
        return event

    def query(self) -> bool:
        return super().query()

    def synchronize(self) -> None:
        super().synchronize()

    @property
    def _as_parameter_(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(self.cuda_stream)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Stream):
            return super().__eq__(other)
        return False

    def __hash__(self) -> int:
        return hash((self.cuda_stream, self.device))

    def __repr__(self) -> str:
        return f"<torch.cuda.Stream device={self.device} cuda_stream={self.cuda_stream:#x}>"

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.cuda_stream)


# The emulated guard numbers the streams it creates 1, 2, 3... (csrc/runtime/guard.cpp); 0 is the
# default stream. A handle at or above _issued_below has not been seen issued yet.
_issued_below = 1
_issued_lock = threading.Lock()
_CUDA_ERROR_HINTS = (
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
    "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
_CUDA_ERROR_INVALID_RESOURCE_HANDLE = 400


def _issued(stream_handle: int) -> bool:
    """Whether the emulator handed out this cudaStream_t value (a stream's ``cuda_stream``)."""
    global _issued_below
    if stream_handle < 0:
        return False
    with _issued_lock:
        if stream_handle >= _issued_below:
            # A new stream gets the next number: every number below it has been handed out.
            _issued_below = int(torch.Stream(device=_TYPE).stream_id)
        return stream_handle < _issued_below


class ExternalStream(Stream):
    r"""A stream allocated elsewhere, identified by its ``cudaStream_t`` value.

    The only streams that exist here are the emulator's, so using a handle it never handed out
    fails as CUDA fails for a handle that is no stream: "invalid resource handle".
    """

    def __new__(cls, stream_ptr: int, device: Any = None, **kwargs: Any) -> "ExternalStream":
        return super().__new__(cls, device, stream_ptr=stream_ptr, **kwargs)

    def _check_handle(self) -> None:
        if not _issued(self.cuda_stream):
            error = torch.AcceleratorError("CUDA error: invalid resource handle\n" + _CUDA_ERROR_HINTS)
            error.error_code = _CUDA_ERROR_INVALID_RESOURCE_HANDLE
            raise error

    def query(self) -> bool:
        self._check_handle()
        return super().query()

    def synchronize(self) -> None:
        self._check_handle()
        super().synchronize()

    def wait_event(self, event: torch.Event) -> None:
        self._check_handle()
        super().wait_event(event)

    def record_event(self, event: torch.Event | None = None) -> torch.Event:
        self._check_handle()
        return super().record_event(event)


class Event(torch.Event):
    r"""Wrapper around a CUDA event (see ``torch.cuda.Event``); recording stores a host timestamp.

    Args:
        enable_timing (bool): whether :meth:`elapsed_time` may be used (default ``False``).
        blocking (bool): whether :meth:`wait` blocks (execution is synchronous either way).
        interprocess (bool): whether the event may be shared between processes.
        external (bool): only affects CUDA graph capture; accepted for compatibility.
    """

    def __new__(
        cls, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False, external: bool = False
    ) -> "Event":
        event = super().__new__(
            cls, device=_TYPE, enable_timing=enable_timing, blocking=blocking, interprocess=interprocess
        )
        event._enable_timing = bool(enable_timing)
        event._recorded_ns = None
        return event

    def record(self, stream: torch.Stream | None = None) -> None:
        if stream is None:
            stream = torch.cuda.current_stream()
        device = self.device
        if device is not None and device.index != stream.device_index:
            # CUDAEvent::record's check and wording (torch.Event words it differently).
            raise RuntimeError(
                f"Event device {device.index} does not match recording stream's device {stream.device_index}."
            )
        super().record(stream)
        # When the stream reaches the event: now, or when its queued work (torch.cuda._sleep)
        # ends. Kept here because torch.Event's own elapsed_time accepts only exact torch.Event
        # arguments.
        self._recorded_ns = _C.stream_ready_ns(_TYPE, int(stream.device_index), int(stream.stream_id))

    def wait(self, stream: torch.Stream | None = None) -> None:
        if stream is None:
            stream = torch.cuda.current_stream()
        super().wait(stream)

    def query(self) -> bool:
        return super().query()

    def elapsed_time(self, end_event: torch.Event) -> float:
        """Milliseconds between this event's record and ``end_event``'s, with CUDA's checks."""
        if not isinstance(end_event, Event):
            return super().elapsed_time(end_event)  # a plain torch.Event: torch's own path
        # The same checks, in the same order and with the same errors, as CUDAEvent::elapsed_time.
        if not (self._enable_timing and end_event._enable_timing):
            raise ValueError("Both events must be created with argument 'enable_timing=True'.")
        if self._recorded_ns is None or end_event._recorded_ns is None:
            raise ValueError("Both events must be recorded before calculating elapsed time.")
        return (end_event._recorded_ns - self._recorded_ns) / 1e6

    def synchronize(self) -> None:
        super().synchronize()

    @property
    def device(self) -> torch.device | None:
        # A CUDA event gets its device when first recorded; before that it has none.
        device = super().device
        return device if device is not None and device.index is not None and device.index >= 0 else None

    @property
    def cuda_event(self) -> int:
        return int(self.event_id)

    @property
    def _as_parameter_(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(self.cuda_event)

    def __repr__(self) -> str:
        if self.cuda_event:
            return f"<torch.cuda.Event {self._as_parameter_.value:#x}>"
        return "<torch.cuda.Event uninitialized>"


def _stream_triple(stream: torch.Stream) -> tuple[int, int, int]:
    return int(stream.stream_id), int(stream.device_index), _CUDA_TYPE_ENUM


def _stream_device(device: int) -> int:
    """The device of a stream lookup, checked as c10::cuda's stream functions check it (check_gpu)."""
    index = _resolve_index(device)
    count = _C.device_count(_TYPE)
    if not 0 <= index < count:
        raise RuntimeError(f"Device index value {index} is out of index range [0, {count})")
    return index


def apply_patches() -> None:
    C = torch._C
    patch = REGISTRY.patch_function

    @patch(C, "_cuda_getCurrentStream", owner=OWNER)
    def _cuda_getCurrentStream(device: int) -> tuple[int, int, int]:
        index = _stream_device(device)
        # The emulated guard keeps the per-thread, per-device current stream.
        return _stream_triple(torch._C._accelerator_getStream(index))

    @patch(C, "_cuda_getCurrentRawStream", owner=OWNER)
    def _cuda_getCurrentRawStream(device: int) -> int:
        # The cudaStream_t of the current stream as an integer (what Stream.cuda_stream gives).
        return _cuda_getCurrentStream(device)[0]

    @patch(C, "_cuda_getDefaultStream", owner=OWNER)
    def _cuda_getDefaultStream(device: int) -> tuple[int, int, int]:
        index = _stream_device(device)
        return 0, index, _CUDA_TYPE_ENUM  # stream id 0 is the default stream (c10::Stream's invariant)

    @patch(C, "_cuda_setStream", owner=OWNER)
    def _cuda_setStream(stream_id: int, device_index: int, device_type: int) -> None:
        _C.check_device(_TYPE, int(device_index))
        # As CUDA's binding: makes the stream current on its device and that device current.
        stream = torch.Stream(stream_id=int(stream_id), device_index=int(device_index), device_type=int(device_type))
        torch._C._accelerator_setStream(stream)

    @patch(C, "_cuda_getStreamFromExternal", owner=OWNER)
    def _cuda_getStreamFromExternal(data_ptr: int, device: int) -> tuple[int, int, int]:
        index = _resolve_index(device)
        _C.check_device(_TYPE, index)
        return int(data_ptr), index, _CUDA_TYPE_ENUM

    # _cuda_isCurrentStreamCapturing, the capture query, is ops.graphs' (it knows the capture state).

    for module in (torch.cuda, torch.cuda.streams):
        REGISTRY.patch(module, "Stream", Stream, owner=OWNER)
        REGISTRY.patch(module, "ExternalStream", ExternalStream, owner=OWNER)
        REGISTRY.patch(module, "Event", Event, owner=OWNER)
