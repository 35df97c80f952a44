"""CUDA's memory history and snapshots on the emulated device.

``torch.cuda.memory._record_memory_history()`` makes the native allocator report every
allocation and free of emulated memory (``_C.set_memory_history_observer``); this module keeps,
as CUDA's caching allocator does, the live blocks with the stack that allocated them and a trace
of alloc/free events per device (Python and TorchScript frames, C++ frames too with
``stacks="all"``). ``_snapshot()``/``memory_snapshot()``/``_dump_snapshot()`` return them in CUDA's
format, which ``torch.cuda._memory_viz`` and https://pytorch.org/memory_viz render.

The emulated allocator caches nothing, so each block is its own segment (what CUDA reports with
``PYTORCH_NO_CUDA_MEMORY_CACHING=1``): reserved equals allocated, and a segment is freed with its
block (with ``TORCHDEVICE_CUDA_CACHING=1``, the segments are those CUDA's caching allocator would
hold: csrc/runtime/caching_model.h). Off, the allocator pays one relaxed load per allocation and
keeps no list of its blocks, so a snapshot finds the blocks allocated before recording (or
without it) through the tensors that hold them (``gc``): listed without frames, as CUDA lists
them; memory only C++ holds (the saved tensors of a graph not yet run backward) is missed there.
"""

from __future__ import annotations

import collections
import gc
import sys
import threading
import time
from typing import Any

import torch

from torchdevice import _C
from torchdevice.core.patch import REGISTRY
from torchdevice.ops.host import incompatible_arguments

OWNER = "ops.memory_history"
_TYPE = "cuda"
_SMALL_SEGMENT = 1 << 20  # CUDA's small pool: blocks up to 1 MiB
_ACTIONS_ALLOC = ("segment_alloc", "alloc")
_ACTIONS_FREE = ("free_requested", "free_completed", "segment_free")


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enabled: str | None = None  # None, "state" (blocks only) or "all" (blocks and trace)
        self.context: str | None = "all"
        self.stacks = "python"
        self.max_entries = sys.maxsize
        self.skip_actions: set[str] = set()
        self.blocks: dict[tuple[int, int], tuple[int, Any]] = {}  # (device, addr) -> (size, traceback)
        self.traces: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self.in_observer = threading.local()
        # The caching model: segments are the model's, so the trace has no segment_alloc or
        # segment_free per block (the allocator reports the model's block addresses and sizes).
        self.modelled = False


    def _traceback(self) -> Any:
        cpp = self.stacks == "all"
        return torch._C._profiler.gather_traceback(python=True, script=True, cpp=cpp)

    def observe(self, allocated: bool, addr: int, size: int, device: int) -> None:
        if getattr(self.in_observer, "active", False):
            return
        self.in_observer.active = True
        try:
            wants_stack = self.context in ("all", "alloc") if allocated else self.context in ("all",)
            traceback = self._traceback() if wants_stack else None
            with self.lock:
                if allocated:
                    self.blocks[(device, addr)] = (size, traceback if self.context in ("all", "alloc", "state") else None)
                else:
                    self.blocks.pop((device, addr), None)
                if self.enabled == "all":
                    trace = self.traces[device]
                    now_us = time.time_ns() // 1000
                    actions = _ACTIONS_ALLOC if allocated else _ACTIONS_FREE
                    if self.modelled:
                        actions = tuple(a for a in actions if not a.startswith("segment_"))
                    for action in actions:
                        if action not in self.skip_actions:
                            trace.append((action, addr, size, now_us, traceback))
                    while len(trace) > self.max_entries:
                        trace.popleft()
        finally:
            self.in_observer.active = False


_recorder = _Recorder()


# How pybind11 shows the binding torch.cuda.memory._record_memory_history calls.
_RECORD_MEMORY_HISTORY_SIGNATURE = (
    "(arg0: Optional[str], arg1: Optional[str], arg2: str, arg3: int, arg4: bool, arg5: bool, arg6: bool, "
    "arg7: list[str]) -> None"
)


def record_memory_history(enabled: Any = "all", context: Any = "all", stacks: str = "all",
                          max_entries: int = sys.maxsize, clear_history: bool = False, compile_context: bool = False,
                          global_record_annotations: bool = False, skip_actions: Any = None,
                          record_pinned_host_memory: bool = False, record_cuda: bool = True) -> None:
    """``torch._C._cuda_record_memory_history``: the same arguments and meaning (the compile and
    annotation contexts and pinned host memory are not recorded)."""
    if not isinstance(max_entries, int) or max_entries < 0:
        # CUDA's binding takes a size_t: pybind refuses a negative (or non-integer) value.
        raise incompatible_arguments(
            "_cuda_record_memory_history", _RECORD_MEMORY_HISTORY_SIGNATURE,
            enabled, context, stacks, max_entries, clear_history, compile_context, global_record_annotations,
            skip_actions if skip_actions is not None else [],
        )
    skip_actions = skip_actions or []
    if not record_cuda:
        enabled = None
    if enabled not in (None, "state", "all"):
        raise ValueError(f"expected enabled to be None, 'state' or 'all', got {enabled!r}")
    if context not in (None, "state", "alloc", "all"):
        raise ValueError(f"expected context to be None, 'state', 'alloc' or 'all', got {context!r}")
    if stacks not in ("python", "all"):
        raise ValueError(f"expected stacks to be 'python' or 'all', got {stacks!r}")
    with _recorder.lock:
        _recorder.modelled = _C.models_caching(_TYPE)
        if clear_history or enabled is None:
            _recorder.traces.clear()
        _recorder.enabled, _recorder.context, _recorder.stacks = enabled, context, stacks
        _recorder.max_entries = max_entries
        _recorder.skip_actions = set(skip_actions)
        if enabled is None:
            _recorder.blocks.clear()
    _C.set_memory_history_observer(_recorder.observe if enabled is not None else None)


def _record_memory_history_legacy(enabled: bool, record_context: bool = True, trace_alloc_max_entries: int = 1,
                                  trace_alloc_record_context: bool = False, record_context_cpp: bool = False,
                                  *_: Any, **__: Any) -> None:
    if not enabled:
        record_memory_history(None)
        return
    record_memory_history("all" if trace_alloc_max_entries > 1 else "state",
                          "all" if (record_context or trace_alloc_record_context) else None,
                          "all" if record_context_cpp else "python", max(int(trace_alloc_max_entries), 0))


def _frames(tracebacks: list[Any]) -> dict[int, list[dict]]:
    present = [tb for tb in tracebacks if tb is not None]
    unique = list({id(tb): tb for tb in present}.values())
    symbolized = torch._C._profiler.symbolize_tracebacks(unique) if unique else []
    return {id(tb): frames for tb, frames in zip(unique, symbolized)}


def _live_blocks() -> dict[tuple[int, int], tuple[int, Any]]:
    """The emulated blocks live tensors hold: (device, address) -> (size, no traceback)."""
    # type(), not isinstance(): that reads __class__, which some lazy objects warn about.
    tensors = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]
    return {(device, addr): (size, None) for device, addr, size in _C.emulated_blocks(tensors)}


def _modelled_segments(blocks: dict[tuple[int, int], tuple[int, Any]], frames: dict[int, list[dict]]) -> list[dict]:
    """The caching model's segments, with the recorded stacks of their allocated blocks."""
    segments = []
    for device in range(_C.device_count(_TYPE)):
        for address, total, small, model_blocks in _C.modelled_segments(_TYPE, device):
            entries = []
            for block_address, size, requested, allocated in model_blocks:
                _, tb = blocks.get((device, block_address), (0, None)) if allocated else (0, None)
                entries.append({"address": block_address, "size": size, "requested_size": requested,
                                "state": "active_allocated" if allocated else "inactive",
                                "frames": frames.get(id(tb), [])})
            allocated_size = sum(b["size"] for b in entries if b["state"] == "active_allocated")
            segments.append({
                "device": device, "address": address, "total_size": total, "allocated_size": allocated_size,
                "active_size": allocated_size, "requested_size": sum(b["requested_size"] for b in entries),
                "stream": 0, "segment_type": "small" if small else "large", "segment_pool_id": (0, 0),
                "is_expandable": False, "frames": entries[0]["frames"], "blocks": entries,
            })
    return segments


def _block_segments(blocks: list, frames: dict[int, list[dict]]) -> list[dict]:
    """Without caching, each block is a segment of its own."""
    segments = []
    for (device, addr), (size, tb) in blocks:
        stack = frames.get(id(tb), [])
        segments.append({
            "device": device, "address": addr, "total_size": size, "allocated_size": size,
            "active_size": size, "requested_size": size, "stream": 0,
            "segment_type": "small" if size <= _SMALL_SEGMENT else "large", "segment_pool_id": (0, 0),
            "is_expandable": False, "frames": stack,
            "blocks": [{"address": addr, "size": size, "requested_size": size, "state": "active_allocated",
                        "frames": stack}],
        })
    return segments


def memory_snapshot(args: Any = None) -> dict[str, Any]:
    """``torch._C._cuda_memorySnapshot``: segments with their blocks, and the event traces."""
    include_traces = not (isinstance(args, tuple) and len(args) >= 3 and not args[2])
    modelled = _C.models_caching(_TYPE)
    live = {} if modelled else _live_blocks()  # the model knows every block
    with _recorder.lock:
        # Blocks allocated while recording keep their stacks; the others come from their tensors.
        blocks = sorted({**live, **_recorder.blocks}.items())
        traces = {d: list(t) for d, t in _recorder.traces.items()} if include_traces else {}
    frames = _frames([tb for _, (_, tb) in blocks] + [e[4] for t in traces.values() for e in t])
    segments = _modelled_segments(dict(blocks), frames) if modelled else _block_segments(blocks, frames)
    count = _C.device_count(_TYPE)
    device_traces = [[] for _ in range(count)]
    for device, events in traces.items():
        if 0 <= device < count:
            device_traces[device] = [
                {"action": action, "addr": addr, "size": size, "stream": 0, "time_us": time_us,
                 "frames": frames.get(id(tb), [])}
                for action, addr, size, time_us, tb in events
            ]
    return {"segments": segments, "device_traces": device_traces,
            "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "", "max_split_size": -1, "garbage_collection_threshold": 0.0,
                                   "expandable_segments": False, "pinned_num_register_threads": 1,
                                   "release_lock_on_cudamalloc": False, "pinned_use_host_register": False,
                                   "roundup_power2_divisions": {}}}


def apply_patches() -> None:
    C = torch._C
    REGISTRY.patch(C, "_cuda_record_memory_history", record_memory_history, owner=OWNER)
    REGISTRY.patch(C, "_cuda_record_memory_history_legacy", _record_memory_history_legacy, owner=OWNER)
    REGISTRY.patch(C, "_cuda_memorySnapshot", memory_snapshot, owner=OWNER)
    # Switched off with the registry (torchdevice's deactivation) and before the interpreter goes.
    REGISTRY.native(C, "memory history observer", undo=lambda: _C.set_memory_history_observer(None), owner=OWNER)
    import atexit

    atexit.register(_C.set_memory_history_observer, None)
