"""CUDA graphs on the emulated device: capture records device work, replay runs it again.

A CUDA graph captures the kernels launched on a stream (without running them) and replays them
later on the same memory. Here the kernels are host calls, so capture records each aten op that
touches a ``cuda`` tensor, through a ``TorchDispatchMode`` (below autograd, so a captured
backward pass is recorded as the ops it runs), and ``replay()`` calls the recorded ops again,
in order, with the same argument tensors. The classic pattern (capture once, copy new data into
the static inputs, replay, read the static outputs) then computes what eager execution computes.

The semantics follow CUDA's:

* Capture does not run device work. Each recorded op gets its results allocated once, with the
  sizes, strides and dtypes its fake-tensor (meta) kernel gives: these are the graph's static
  outputs, whose contents are undefined until a replay writes them (as memory from the graph's
  private pool). Every replay writes the same tensors. In-place and ``out=`` ops write their
  arguments, as the captured kernels would.
* Host work runs at capture time, once: ops on CPU tensors only, and what only reads metadata
  (views, shape queries, allocations). A CPU scalar tensor handed to a device op is captured by
  value, as a kernel argument is.
* Reading device data on the host during capture (``.item()``, ``.cpu()``, ``nonzero``,
  ``torch.equal``) fails with CUDA's "operation not permitted when stream is capturing", and the
  capture is invalidated. A non-blocking copy to the host is captured, as on a GPU.
* Capture must begin on a non-default stream and end on the stream it began on; replay before a
  capture, ``pool()`` before a capture, and capturing twice into one graph raise CUDA's errors.
* Random ops draw from the device generator at each replay, so every replay gets fresh numbers
  and advances the generator, as CUDA graphs do through their Philox offset. The numbers are not
  CUDA's: a replay after ``manual_seed(s)`` gives what the same ops give eagerly after
  ``manual_seed(s)``.

Approximations: memory pools are tokens only (host memory needs no private pool; a graph keeps
its static tensors alive itself, so freeing an input before replay cannot corrupt anything);
one capture at a time in the process; ``is_current_stream_capturing()`` is True on every thread
while a capture is underway; ops launched from other Python threads during a capture run eagerly
and are not recorded (CUDA's ``thread_local`` capture mode). There is no ``cudaGraph_t``:
``raw_cuda_graph()`` and ``get_graph_data()`` raise, and ``debug_dump`` (and the hook of
``torch.cuda.export_dot``) writes the recorded op list as a DOT graph. The lifecycle hooks of
torch 2.14 (capture start/end, post-instantiate, replay start/end, destroy callbacks, retained
objects, and torch's module-level graph hooks) fire where they fire on a GPU.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.cuda
import torch.cuda.graphs
from torch.utils import _python_dispatch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from torchdevice.core.patch import REGISTRY

OWNER = "ops.graphs"
_TYPE = "cuda"
_CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")

aten = torch.ops.aten

# Ops that read device memory on the host: a sync, which CUDA refuses during capture.
_HOST_READS = frozenset({aten._local_scalar_dense, aten.item, aten.equal, aten.is_nonzero})
# Allocations: their contents are undefined until written, so they need no replay.
_ALLOCATIONS = frozenset({aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided})
# Metadata changes of existing tensors (shape, strides, storage), done at capture time.
_METADATA_CHANGES = frozenset({aten.resize_, aten.resize_as_, aten.set_})
# Ops that return a view of their input without saying so in their schema (by name: inductor's
# ops exist only once torch._inductor is imported).
_UNDECLARED_VIEWS = frozenset({"aten::_unsafe_view", "aten::_reshape_alias", "inductor::_alloc_from_pool"})

# torch.cuda.CUDAGraph.debug_dump's switch, which real CUDA keeps process-wide too.
_debug_mode = False

_pool_ids = itertools.count(1)
_capture_lock = threading.Lock()
_capturing: "CUDAGraph | None" = None


def _new_pool_id(user_created: bool) -> tuple[int, int]:
    # As MemPool::graph_pool_handle: handles made by graph_pool_handle() set the second value,
    # pools a capture creates for itself set the first, so the two kinds never collide.
    n = next(_pool_ids)
    return (0, n) if user_created else (n, 0)


def _capture_error(op_name: str) -> RuntimeError:
    return RuntimeError(
        "CUDA error: operation not permitted when stream is capturing\n"
        f"({op_name} reads device memory on the host, which a CUDA graph cannot capture; "
        "move it outside the captured region)"
    )


class CUDAGraph:
    r"""Wrapper around a CUDA graph (see ``torch.cuda.CUDAGraph``), emulated by op recording.

    Arguments:
        keep_graph (bool, optional): as on a GPU, ``instantiate()`` is then deferred to the first
            ``replay()`` or an explicit call; the recorded graph is kept either way.

    The lifecycle hooks of torch 2.14 (``register_capture_start_hook``, ``..._capture_end_hook``,
    ``register_post_instantiate_hook``, ``register_replay_start_hook``/``..._end_hook``,
    ``register_destroy_callback``, ``retain_object``, and the module-level
    ``torch.cuda.graphs.register_graph_*_hook``) fire at the same points as on a GPU.
    """

    def __init__(self, keep_graph: bool = False) -> None:
        self._keep_graph = bool(keep_graph)
        self._ops: list[_RecordedOp] = []
        self._capture_ended = False
        self._instantiated = False
        self._template_live = False  # between capture_end_pre and capture_end_post
        self._recorder: _Recorder | None = None
        self._pool: tuple[int, int] | None = None
        self._device: int | None = None
        # OrderedDicts: RemovableHandle weak-references the mapping it removes from.
        self._capture_start_hooks: OrderedDict[int, Callable[[CUDAGraph], None]] = OrderedDict()
        self._capture_end_hooks: OrderedDict[int, Callable[[CUDAGraph], None]] = OrderedDict()
        self._post_instantiate_hooks: OrderedDict[int, Callable[[CUDAGraph], None]] = OrderedDict()
        self._replay_start_hooks: OrderedDict[int, Callable[[CUDAGraph], None]] = OrderedDict()
        self._replay_end_hooks: OrderedDict[int, Callable[[CUDAGraph], None]] = OrderedDict()
        self._retained = _Retained()
        self._retained_finalizer: weakref.finalize | None = None
        self._arm_retained()

    def capture_begin(
        self, pool: tuple[int, int] | None = None, capture_error_mode: str = "global", check_input_liveness: bool = False
    ) -> None:
        r"""Begin capturing CUDA work on the current stream (use ``torch.cuda.graph`` instead).

        ``check_input_liveness`` is accepted and needs no tracking: the graph holds every tensor
        it uses, so an input freed before replay cannot be read after free.
        """
        global _capturing
        if self._capture_ended or self._recorder is not None:
            raise RuntimeError(
                "This CUDAGraph instance already owns a captured graph. To capture a new graph, create a new instance."
            )
        if capture_error_mode not in _CAPTURE_ERROR_MODES:
            raise RuntimeError(
                f"Unknown capture error mode. Expected `global`, `thread_local`, or `relaxed`, got {capture_error_mode}"
            )
        stream = torch.cuda.current_stream()
        if stream == torch.cuda.default_stream(stream.device):
            raise RuntimeError(
                "CUDA graphs must be captured on a non-default stream. "
                "(However, after capture, it's ok to replay them on the default stream.)"
            )
        with _capture_lock:
            if _capturing is not None:
                raise RuntimeError(
                    "torchdevice: another CUDA graph capture is already underway; the emulated "
                    "device captures one graph at a time"
                )
            _capturing = self
        self._pool = tuple(pool) if pool is not None and any(pool) else _new_pool_id(user_created=False)
        self._device = stream.device_index
        self._recorder = _Recorder(stream)
        self._recorder.__enter__()
        # Capture is live: what a hook launches on the device is captured. Global hooks first.
        _run_global_hooks("_global_capture_start_hooks", self)
        for hook in list(self._capture_start_hooks.values()):
            hook(self)

    def capture_end(self) -> None:
        r"""End CUDA graph capture on the current stream (use ``torch.cuda.graph`` instead)."""
        self.capture_end_pre()
        # The captured graph is complete and its template live: capture-end hooks see it.
        _run_global_hooks("_global_capture_end_hooks", self)
        for hook in list(self._capture_end_hooks.values()):
            hook(self)
        if not self._keep_graph:
            self.instantiate()
        self.capture_end_post()

    def capture_end_pre(self) -> None:
        r"""End capture without finalizing: the captured graph can be inspected before ``capture_end_post``."""
        global _capturing
        recorder = self._recorder
        if recorder is None:
            raise RuntimeError("capture_end() called before capture_begin().")
        if torch.cuda.current_stream() != recorder.stream:
            raise RuntimeError("Capture must end on the same stream it began on.")
        recorder.__exit__(None, None, None)
        self._recorder = None
        with _capture_lock:
            _capturing = None
        if recorder.invalidated:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        self._ops = recorder.ops
        if not self._ops:
            warnings.warn(
                "The CUDA Graph is empty. This usually means that the graph was attempted to be "
                "captured on wrong device or stream.",
                stacklevel=2,
            )
        self._capture_ended = True
        self._template_live = True

    def capture_end_post(self) -> None:
        r"""Finalize a capture ended by ``capture_end_pre`` (with ``keep_graph=False`` the graph must be instantiated)."""
        if not self._capture_ended:
            raise RuntimeError("capture_end_post() called before capture_end_pre().")
        if not self._keep_graph and not self._instantiated:
            raise RuntimeError("capture_end_post() with keep_graph=False requires the graph to be instantiated")
        # A GPU destroys the cudaGraph_t template here (keep_graph=False); the recorded ops are
        # the instantiated graph too, so they stay.
        self._template_live = self._keep_graph

    def instantiate(self) -> None:
        r"""Instantiate the graph (done by ``capture_end``, or by ``replay`` with ``keep_graph=True``)."""
        if not self._capture_ended:
            raise RuntimeError("capture_end() must have been called before calling instantiate")
        if self._instantiated and not self._keep_graph:
            raise RuntimeError("instantiate() is intended to be called by the user only when keep_graph=true")
        self._instantiated = True
        _run_global_hooks("_global_instantiate_hooks", self)
        for hook in list(self._post_instantiate_hooks.values()):
            hook(self)

    @property
    def _has_graph_exec(self) -> bool:
        return self._instantiated

    def replay(self) -> None:
        r"""Replay the CUDA work captured by this graph."""
        if not self._capture_ended:
            raise RuntimeError("Called CUDAGraph::replay without a preceding successful capture.")
        if not self._instantiated:
            self.instantiate()
        _run_global_hooks("_global_replay_start_hooks", self)
        for hook in list(self._replay_start_hooks.values()):
            hook(self)
        try:
            # The recorded ops are below autograd and after autocast: run them as recorded,
            # without building autograd graphs, bumping version counters or casting again.
            with torch.cuda.device(self._device), torch._C._AutoDispatchBelowADInplaceOrView(), _autocast_off():
                for op in self._ops:
                    op.run()
        finally:
            # As on a GPU, end hooks fire even when the launch raised.
            _run_global_hooks("_global_replay_end_hooks", self)
            for hook in list(self._replay_end_hooks.values()):
                hook(self)

    def reset(self) -> None:
        r"""Delete the graph currently held by this instance."""
        global _capturing
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None
            with _capture_lock:
                if _capturing is self:
                    _capturing = None
        # The graph may be captured again: this cycle's destroy callbacks fire now, and a fresh
        # holder is armed for the next one.
        self._retained.fire()
        if self._retained_finalizer is not None:
            self._retained_finalizer.detach()
        self._arm_retained()
        self._ops = []
        self._capture_ended = False
        self._instantiated = False
        self._template_live = False

    def pool(self) -> tuple[int, int]:
        r"""An opaque token for this graph's memory pool, which another capture may share."""
        if not self._capture_ended:
            raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
        assert self._pool is not None
        return self._pool

    def pools(self) -> list[tuple[int, int]]:
        r"""Tokens of the memory pools this graph retains: its own."""
        return [self._pool] if self._capture_ended and self._pool is not None else []

    def register_generator_state(self, state: Any) -> None:
        r"""Accepted for compatibility: random ops draw from their generator at each replay."""

    # --- lifecycle hooks (torch 2.14) -----------------------------------------------------

    def register_capture_start_hook(self, hook: Callable[[CUDAGraph], None]) -> RemovableHandle:
        r"""Run ``hook(graph)`` when capture begins (inside the capture: device work it launches is captured)."""
        return _add_hook(self._capture_start_hooks, hook)

    def register_capture_end_hook(self, hook: Callable[[CUDAGraph], None]) -> RemovableHandle:
        r"""Run ``hook(graph)`` when capture ends, before the graph is finalized (``debug_dump`` works then)."""
        return _add_hook(self._capture_end_hooks, hook)

    def register_post_instantiate_hook(self, hook: Callable[[CUDAGraph], None]) -> RemovableHandle:
        r"""Run ``hook(graph)`` after each instantiation."""
        return _add_hook(self._post_instantiate_hooks, hook)

    def register_replay_start_hook(self, hook: Callable[[CUDAGraph], None]) -> RemovableHandle:
        r"""Run ``hook(graph)`` at the start of every replay."""
        return _add_hook(self._replay_start_hooks, hook)

    def register_replay_end_hook(self, hook: Callable[[CUDAGraph], None]) -> RemovableHandle:
        r"""Run ``hook(graph)`` at the end of every replay (also when the replay raised)."""
        return _add_hook(self._replay_end_hooks, hook)

    def register_destroy_callback(
        self, cb: Callable[[], None], *, synchronize_before_release: bool = False
    ) -> RemovableHandle:
        r"""Run ``cb()`` when this graph is destroyed or ``reset()``; ``cb`` must not reference the graph.

        ``synchronize_before_release`` needs no action: replays run synchronously, so none is
        in flight when the callback runs.
        """
        return _add_hook(self._retained.callbacks, cb)

    def retain_object(self, obj: object, *, synchronize_before_release: bool = False) -> RemovableHandle:
        r"""Keep ``obj`` alive until this graph is destroyed or ``reset()``; ``obj`` must not reference the graph."""
        return _add_hook(self._retained.objects, obj)

    def _arm_retained(self) -> None:
        # The finalizer is bound to the holder, not to the graph, so it never keeps it alive.
        self._retained = _Retained()
        self._retained_finalizer = weakref.finalize(self, self._retained.fire)
        if hasattr(torch.cuda.graphs, "register_graph_destroy_hook"):  # torch >= 2.14
            # Hooks registered with torch.cuda.register_graph_destroy_hook run when any graph
            # is destroyed; torch's own graphs call this private entry point for them (tested
            # in tests/test_torch_internals.py, so a release that renames it fails a test).
            # Consumers key per-graph state by exec graph ids (CUPTI tools ids), which an
            # emulated graph does not have: they are told of its destruction with none.
            run_destroy_hooks = torch.cuda.graphs._run_graph_destroy_hooks
            self.register_destroy_callback(lambda: run_destroy_hooks(set()))

    # --- inspection -----------------------------------------------------------------------

    def enable_debug_mode(self) -> None:
        r"""Enable debugging mode for ``CUDAGraph.debug_dump``."""
        global _debug_mode
        _debug_mode = True

    def debug_dump(self, debug_path: str, *, verbose: bool = True) -> None:
        r"""Write the captured ops, in replay order, to ``debug_path`` as a DOT graph.

        As on a GPU, the captured graph must be kept (``keep_graph=True`` or debug mode) or the
        call made from a capture-end hook (``torch.cuda.export_dot``). ``verbose`` adds each
        op's argument shapes.
        """
        if not (_debug_mode or self._keep_graph or self._template_live):
            warnings.warn("CUDA Graphs debug not enabled, set with [graph].enable_debug_mode()", stacklevel=2)
            return
        self._write_dot(debug_path, verbose=verbose)

    def _write_dot(self, path: str, *, verbose: bool = True) -> None:
        lines = ["digraph cuda_graph {"]
        for i, op in enumerate(self._ops):
            label = f"{i}: {op.name}"
            if verbose:
                label += "\\n" + op.describe_arguments()
            lines.append(f'  n{i} [label="{label}"];')
            if i:
                lines.append(f"  n{i - 1} -> n{i};")
        lines.append("}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def raw_cuda_graph(self) -> int:
        r"""Not available: the emulated graph is a list of host calls, not a ``cudaGraph_t``."""
        raise RuntimeError("torchdevice: an emulated CUDA graph has no cudaGraph_t (it records host calls)")

    def raw_cuda_graph_exec(self) -> int:
        r"""Not available: the emulated graph is a list of host calls, not a ``cudaGraphExec_t``."""
        raise RuntimeError("torchdevice: an emulated CUDA graph has no cudaGraphExec_t (it records host calls)")

    def get_graph_data(self) -> dict:
        r"""Not available: it describes a ``cudaGraph_t``'s nodes by their CUPTI tools ids.

        The emulated graph has neither; ``debug_dump`` (or ``torch.cuda.export_dot``) lists its ops.
        """
        raise RuntimeError(
            "torchdevice: get_graph_data describes a cudaGraph_t by CUPTI tools ids, which an emulated "
            "CUDA graph does not have (it records host calls; debug_dump or torch.cuda.export_dot lists them)"
        )


class _Retained:
    """Destroy callbacks and retained objects of one capture cycle (``torch.cuda.graphs._RetainedCallbacks``)."""

    def __init__(self) -> None:
        self.callbacks: OrderedDict[int, Callable[[], None]] = OrderedDict()
        self.objects: OrderedDict[int, object] = OrderedDict()
        self._fired = False

    def fire(self) -> None:
        if self._fired:
            return
        self._fired = True
        for cb in list(self.callbacks.values()):
            try:
                cb()
            except Exception:
                pass  # finalizer semantics, as torch's: one failure does not stop the rest
        self.callbacks.clear()
        self.objects.clear()


def _add_hook(registry: OrderedDict, value: Any) -> RemovableHandle:
    handle = RemovableHandle(registry)
    registry[handle.id] = value
    return handle


def _run_global_hooks(name: str, graph: CUDAGraph) -> None:
    """Torch's module-level graph hooks (``torch.cuda.graphs.register_graph_*_hook``, torch >= 2.14).

    Errors are swallowed, as torch does, so one consumer cannot break another's graph.
    """
    registry = getattr(torch.cuda.graphs, name, None)
    if not registry:
        return
    for fn in list(registry.values()):
        try:
            fn(graph)
        except Exception:
            pass


def _autocast_off() -> Any:
    return torch.autocast(_TYPE, enabled=False)


class _RecordedOp:
    """One captured op: its arguments (the same tensors at every replay) and static results."""

    __slots__ = ("func", "args", "kwargs", "statics", "name")

    def __init__(
        self,
        func: Any,
        args: tuple,
        kwargs: dict,
        statics: tuple[tuple[int, torch.Tensor], ...],
        name: str | None = None,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.statics = statics  # (position among the result's tensor leaves, static tensor)
        self.name = name or str(func)

    def describe_arguments(self) -> str:
        """The op's tensor arguments as ``dtype[shape]``, for debug dumps."""
        parts = []
        for value in pytree.tree_leaves((self.args, self.kwargs)):
            if isinstance(value, torch.Tensor):
                parts.append(f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}")
        return ", ".join(parts)

    def run(self) -> None:
        result = self.func(*self.args, **self.kwargs)
        if self.statics:
            leaves = pytree.tree_leaves(result)
            for index, static in self.statics:
                static.copy_(leaves[index])


class _Recorder(TorchDispatchMode):
    """Records the device ops of one capture (see the module docstring for what runs when)."""

    def __init__(self, stream: torch.Stream) -> None:
        super().__init__()
        self.stream = stream
        self.ops: list[_RecordedOp] = []
        self.invalidated = False
        self._fake_mode: Any = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _is_device_work(args, kwargs):
            return func(*args, **kwargs)  # host work runs now, as during a real capture
        packet = func.overloadpacket
        if packet in _HOST_READS or _is_blocking_copy_to_host(packet, args, kwargs):
            self.invalidated = True
            raise _capture_error(str(func))
        if packet in _METADATA_CHANGES or torch.Tag.inplace_view in func.tags:
            self._fake_mode = None  # fake copies of the changed tensor are now stale
            return func(*args, **kwargs)
        if func.is_view or packet in _ALLOCATIONS or func._schema.name in _UNDECLARED_VIEWS:
            return func(*args, **kwargs)
        schema = func._schema
        if schema.returns and not _returns_tensors(schema) and not _writes_arguments(schema):
            return func(*args, **kwargs)  # a metadata query (e.g. _fused_sdp_choice)
        return self._record(func, args, kwargs)

    def _record(self, func, args, kwargs):
        fake_mode = self._fake()
        real_of: dict[int, torch.Tensor] = {}

        def to_fake(value):
            if isinstance(value, torch.Tensor):
                fake = fake_mode.from_tensor(value)
                real_of[id(fake)] = value
                return fake
            return value

        fake_args, fake_kwargs = pytree.tree_map(to_fake, (args, kwargs))
        from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

        try:
            with fake_mode:
                fake_result = func(*fake_args, **fake_kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException):
            # The result's shape depends on device data: CUDA would need a sync here.
            self.invalidated = True
            raise _capture_error(str(func)) from None

        written: set[int] = set()
        statics: list[tuple[int, torch.Tensor]] = []
        leaf_index = itertools.count()

        def to_real(value):
            if not isinstance(value, torch.Tensor):
                return value
            index = next(leaf_index)
            real = real_of.get(id(value))
            if real is not None:  # an argument, written in place (in-place and out= ops)
                written.add(id(real))
                if real.shape != value.shape:
                    # An out= argument the op resizes: its new shape is host metadata, set now
                    # (as the op's allocation would be), so later captured ops see it.
                    real.resize_(value.shape)
                    self._fake_mode = None
                return real
            static = _allocate_like(value)
            statics.append((index, static))
            return static

        result = pytree.tree_map(to_real, fake_result)
        self.ops.append(_RecordedOp(func, _bake_host_scalars(args, written), _bake_host_scalars(kwargs, written), tuple(statics)))
        return result

    def _fake(self) -> Any:
        if self._fake_mode is None:
            from torch._subclasses.fake_tensor import FakeTensorMode

            self._fake_mode = FakeTensorMode()
        return self._fake_mode


def launch_kernel(name: str, kernel: Any, *args: Any) -> None:
    """Call a C++ kernel that ``torch.compile`` generated for the emulated GPU, or capture it.

    Compiled graphs call their kernels directly, not through the dispatcher, so the capture's
    dispatch mode does not see them: their wrapper calls them through this function instead
    (see ``torchdevice.utils.compile``). During a capture on this thread (or on an autograd
    thread serving it), the launch is recorded, in order with the graph's other ops, and runs at
    each replay on the same buffers; otherwise the kernel runs now.
    """
    graph = _capturing
    if graph is not None:
        recorder = graph._recorder
        if recorder is not None and recorder in _python_dispatch._get_current_dispatch_mode_stack():
            recorder.ops.append(_RecordedOp(kernel, args, {}, (), name))
            return None
    kernel(*args)
    return None


def _is_device_work(args: tuple, kwargs: dict) -> bool:
    for value in pytree.tree_leaves((args, kwargs)):
        if isinstance(value, torch.Tensor):
            if value.device.type == _TYPE:
                return True
        elif isinstance(value, torch.device) and value.type == _TYPE:
            return True
    return False


def _is_blocking_copy_to_host(packet: Any, args: tuple, kwargs: dict) -> bool:
    """A device-to-host copy that waits for the copy (``x.cpu()``): a sync, refused during capture."""
    if packet is aten._to_copy:
        device = kwargs.get("device")
        return (
            args[0].device.type == _TYPE
            and device is not None
            and torch.device(device).type == "cpu"
            and not kwargs.get("non_blocking", False)
        )
    if packet is aten.copy_:
        destination, source = args[0], args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return destination.device.type == "cpu" and source.device.type == _TYPE and not non_blocking
    return False


def _returns_tensors(schema: Any) -> bool:
    return any("Tensor" in str(r.type) for r in schema.returns)


def _writes_arguments(schema: Any) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def _allocate_like(fake: torch.Tensor) -> torch.Tensor:
    """A real tensor with ``fake``'s layout: a static output of the graph."""
    device = fake.device
    offset = fake.storage_offset()
    if offset == 0:
        return torch.empty_strided(fake.shape, fake.stride(), dtype=fake.dtype, device=device)
    numel = fake.untyped_storage().nbytes() // fake.element_size()
    base = torch.empty(numel, dtype=fake.dtype, device=device)
    return base.as_strided(fake.shape, fake.stride(), offset)


def _bake_host_scalars(tree: Any, written: set[int]) -> Any:
    # A 0-dim CPU tensor given to a device kernel is passed by value at launch: capture keeps
    # the value it had then. Larger CPU tensors are memory the copy reads at replay.
    def bake(value):
        if (
            isinstance(value, torch.Tensor)
            and value.device.type == "cpu"
            and value.dim() == 0
            and id(value) not in written
        ):
            return value.clone()
        return value

    return pytree.tree_map(bake, tree)


class AllocatorState:
    """``torch._C._cuda_CUDAAllocator_AllocatorState``: a checkpoint of a graph memory pool.

    cudagraph trees checkpoint private pools with it. The emulated device has no private pools,
    so none is ever created; the type exists because ``torch._inductor.cudagraph_trees`` imports
    it on CUDA builds, and ``torch._dynamo.reset()`` imports that module.
    """


def apply_patches() -> None:
    C = torch._C
    graphs = torch.cuda.graphs

    def _cuda_isCurrentStreamCapturing() -> bool:
        return _capturing is not None

    def _graph_pool_handle() -> tuple[int, int]:
        return _new_pool_id(user_created=True)

    for module in (C, graphs):
        REGISTRY.patch(module, "_cuda_isCurrentStreamCapturing", _cuda_isCurrentStreamCapturing, owner=OWNER)
        REGISTRY.patch(module, "_graph_pool_handle", _graph_pool_handle, owner=OWNER)
    REGISTRY.patch(C, "_CUDAGraph", CUDAGraph, owner=OWNER)
    for module in (torch.cuda, graphs):
        REGISTRY.patch(module, "CUDAGraph", CUDAGraph, owner=OWNER)

    # torch >= 2.14: torch.cuda.export_dot's hook (and CUDAGraph.debug_dump) dump a graph with
    # this function, through cuda.bindings; an emulated graph writes its recorded ops.
    if hasattr(graphs, "_dump_graph_dot"):

        def _dump_graph_dot(cuda_graph: CUDAGraph, path: str, *, verbose: bool = True) -> None:
            cuda_graph._write_dot(path, verbose=verbose)

        REGISTRY.patch(graphs, "_dump_graph_dot", _dump_graph_dot, owner=OWNER)

    if not hasattr(C, "_cuda_CUDAAllocator_AllocatorState"):
        REGISTRY.patch(C, "_cuda_CUDAAllocator_AllocatorState", AllocatorState, owner=OWNER)
