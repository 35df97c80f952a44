"""torch.profiler's CUDA side on the emulated device.

The native core registers CUDA profiler stubs (csrc/runtime/profiler_stubs.cpp): torch's own
"GPU fallback" profiling, which it uses wherever CUPTI is absent, takes a device event before
and after each op and reports their distance as the op's CUDA time, so ``cuda_time_total``,
``self_device_time_total`` and the table's CUDA columns are filled. An event reads the device's
kernel clock (csrc/runtime/kernel_clock.h): the time runner kernels have run on it, so an op's
device time is the time its kernels ran, within its CPU time, in whole microseconds (torch's
fallback keeps no more). On a CPU build that is the path torch takes for ``ProfilerActivity.CUDA``
already; a CUDA build's kineto would ask CUPTI, which needs a GPU, so its profiler is told CUDA
tracing is not available and takes the fallback too. ``torch.profiler.supported_activities()``
still lists CUDA, as on a GPU. Kernels are timed only while a profiler runs.

The fallback leaves device work out of the Chrome trace; ``export_chrome_trace`` adds it on a
GPU row, as CUPTI's traces have it: process "GPU N", thread "stream 7" (CUDA's default stream),
one "kernel" event per op with device time of its own, after that op's children, linked to its
CPU op by a flow arrow. The fallback's events do not name their device: the row is the current
device's. A CUDA build's kineto logs an error when a profile stops on a machine without a GPU
(it asks the CUDA runtime for device properties); it is kept quiet around the stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gzip
import json
import os
from typing import Any

import torch

from torchdevice.core.device import torch_has_cuda_build
from torchdevice.core.patch import REGISTRY

OWNER = "ops.profiler"
_DEFAULT_STREAM = 7  # what CUPTI traces call the default stream
_KINETO_SILENT = 5  # above kineto's highest severity (ERROR = 4): KINETO_LOG_LEVEL=5


def _device_rows(function_events: Any, trace: dict) -> list[dict]:
    """Kernel events for the ops that ran on an emulated device, on a GPU row."""
    cpu_ops = {e.get("args", {}).get("External id"): e for e in trace.get("traceEvents", []) if e.get("cat") == "cpu_op"}
    rows: list[dict] = []
    devices = set()
    for event in function_events:
        own = event.self_device_time_total
        cpu_op = cpu_ops.get(event.id)
        if own <= 0 or cpu_op is None:
            continue
        # The op's own device work follows its children's (kernels run as the op reaches them).
        start_us = cpu_op["ts"] + max((c.time_range.end for c in event.cpu_children), default=event.time_range.start) - event.time_range.start
        start_us = min(start_us, cpu_op["ts"] + max(cpu_op.get("dur", 0) - own, 0))
        # The fallback's events do not say which device; ops run on the current one (per thread).
        device = torch.cuda.current_device()
        devices.add(device)
        kernel = {"ph": "X", "cat": "kernel", "name": event.name, "pid": device, "tid": _DEFAULT_STREAM,
                  "ts": start_us, "dur": own, "args": {"External id": event.id, "device": device,
                                                        "stream": _DEFAULT_STREAM, "correlation": event.id}}
        rows.append(kernel)
        flow = {"cat": "ac2g", "name": "ac2g", "id": event.id, "bp": "e"}
        rows.append({**flow, "ph": "s", "pid": cpu_op["pid"], "tid": cpu_op["tid"], "ts": cpu_op["ts"]})
        rows.append({**flow, "ph": "f", "pid": device, "tid": _DEFAULT_STREAM, "ts": start_us})
    for device in sorted(devices):
        rows.append({"ph": "M", "name": "process_name", "pid": device, "tid": 0, "args": {"name": f"GPU {device}"}})
        rows.append({"ph": "M", "name": "process_labels", "pid": device, "tid": 0, "args": {"labels": f"GPU {device}"}})
        rows.append({"ph": "M", "name": "thread_name", "pid": device, "tid": _DEFAULT_STREAM,
                     "args": {"name": f"stream {_DEFAULT_STREAM}"}})
    return rows


def _add_device_rows(profiler: Any, path: str) -> None:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    trace.setdefault("traceEvents", []).extend(_device_rows(profiler.function_events, trace))
    with opener(path, "wt") as f:
        json.dump(trace, f)


def apply_patches() -> None:
    import torch.autograd.profiler as autograd_profiler

    supported = autograd_profiler._supported_activities

    def _supported_activities():
        # What kineto itself can trace: the emulated device's work is traced by the stubs.
        return {a for a in supported() if a != torch.profiler.ProfilerActivity.CUDA}

    REGISTRY.patch(autograd_profiler, "_supported_activities", _supported_activities, owner=OWNER)

    export = autograd_profiler.profile.export_chrome_trace

    def export_chrome_trace(self, path, *args, **kwargs):
        result = export(self, path, *args, **kwargs)
        if getattr(self, "use_device", None) == "cuda" and self.profiler_kind == torch.autograd.ProfilerState.KINETO_GPU_FALLBACK:
            _add_device_rows(self, path)
        return result

    export_chrome_trace.__doc__ = export.__doc__
    REGISTRY.patch(autograd_profiler.profile, "export_chrome_trace", export_chrome_trace, owner=OWNER)

    # profile_memory=True: the emulated allocator reports to the profiler while one runs
    # (torch.profiler.profile starts its autograd profiler with _start_trace, not __enter__).
    start_trace, exit_ = autograd_profiler.profile._start_trace, autograd_profiler.profile.__exit__

    def _start_trace(self, *args, **kwargs):
        result = start_trace(self, *args, **kwargs)
        if self.enabled and getattr(self, "use_device", None) == "cuda":
            # The stubs' first device event switches kernel timing on; the last profiler's
            # stop switches it off (runtime/kernel_clock.h).
            _device_profilers.append(self)
        if self.enabled and self.profile_memory:
            _memory_profilers.append(self)
            _set_memory_reporting()
        return result

    def __exit__(self, *args, **kwargs):
        try:
            with _quiet_kineto():
                return exit_(self, *args, **kwargs)
        finally:
            if self in _memory_profilers:
                _memory_profilers.remove(self)
                _set_memory_reporting()
            if self in _device_profilers:
                _device_profilers.remove(self)
                if not _device_profilers:
                    _C().set_kernel_timing(False)

    REGISTRY.patch(autograd_profiler.profile, "_start_trace", _start_trace, owner=OWNER)
    REGISTRY.patch(autograd_profiler.profile, "__exit__", __exit__, owner=OWNER)


_memory_profilers: list[Any] = []
_device_profilers: list[Any] = []


def _C() -> Any:
    from torchdevice import _C as native

    return native


def _set_memory_reporting() -> None:
    _C().set_profiler_memory_reporting(bool(_memory_profilers))


@functools.lru_cache(maxsize=None)
def _kineto_severity() -> ctypes.c_int | None:
    """kineto's log threshold (libkineto::Logger::severityLevel_, exported by libtorch_cpu), or None.

    A CUDA build's kineto asks the CUDA runtime for device properties when a profile stops and
    logs "gpuGetDeviceCount failed with code 35" where there is no GPU. kineto's own switch,
    KINETO_LOG_LEVEL, is read when the profiler first starts; the threshold itself can be raised
    around the stop.
    """
    if not torch_has_cuda_build():
        return None  # a CPU build's kineto never asks a GPU
    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return ctypes.c_int.in_dll(library, "_ZN9libkineto6Logger14severityLevel_E")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _quiet_kineto():
    severity = _kineto_severity()
    if severity is None:
        yield
        return
    before = severity.value
    severity.value = max(before, _KINETO_SILENT)
    try:
        yield
    finally:
        severity.value = before
