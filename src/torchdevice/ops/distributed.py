"""``torch.distributed`` on the emulated device: programs written for NCCL run on gloo.

On a GPU machine a CUDA program asks for ``init_process_group("nccl")`` (or for no backend, which
picks NCCL for cuda). There is no NCCL here, and no need for a new engine: the native core's
fallback already serves c10d collectives on emulated cuda tensors by running the process group's
CPU backend on CPU stand-ins over the same memory. So every process group that would have been
NCCL is created as gloo, which gives the same results (collectives are exact data movement and
the same reductions); one INFO line says so. What NCCL does and gloo does not is emulated here,
in Python, on top of gloo:

* ``ReduceOp.PREMUL_SUM`` (``_make_nccl_premul_sum``): the input is scaled, then summed.
* ``all_gather`` with tensors of different sizes per rank: one broadcast per rank, as
  ProcessGroupNCCL does it.
* ``all_gather_single`` / ``reduce_scatter_single`` (and their older names) with the stacked
  ``(world_size, *shape)`` layout NCCL accepts: gloo sees the flat layout, same bytes.
* ``reduce`` leaves the tensor of ranks other than ``dst`` untouched, as ncclReduce does (gloo
  uses it as scratch space).
* An asynchronous collective keeps its cuda tensors alive until it completes. NCCL's work
  objects hold them; gloo's hold only the CPU stand-ins, which do not own the memory, so a
  temporary passed to ``isend`` or ``all_reduce(async_op=True)`` could otherwise be freed and
  reused while gloo still reads it.

``is_nccl_available()`` answers True (the backend named "nccl" works), ``ProcessGroupNCCL.Options``
exists so ``pg_options=`` written for NCCL is accepted (its GPU tuning has nothing to tune here and
is dropped), and the default timeout of a group asked for as NCCL is NCCL's ten minutes.

Import cost: none. ``torch.distributed`` is already imported by ``import torch`` (2.13), and
``torch.distributed._functional_collectives`` (15-30 ms) is patched when the program imports it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import threading
from typing import Any, Callable

import torch
import torch.distributed as dist

from torchdevice.core.after_import import call_after_import
from torchdevice.core.logger import logger
from torchdevice.core.patch import REGISTRY

OWNER = "ops.distributed"
_TYPE = "cuda"

# ProcessGroupNCCL's default timeout (kProcessGroupNCCLDefaultTimeout in ProcessGroupNCCL.hpp);
# a CPU build of torch has no value for it and warns when "nccl" asks.
NCCL_DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


class _NCCLConfig:
    """``ProcessGroupNCCL.NCCLConfig``: ncclConfig_t's fields, settable and not consulted."""

    def __init__(self) -> None:
        self.blocking = 1
        self.cga_cluster_size = -1
        self.min_ctas = -1
        self.max_ctas = -1
        self.net_name = ""
        self.split_share = 0
        self.cta_policy = ProcessGroupNCCL.NCCL_CTA_POLICY_DEFAULT


class _NCCLOptions:
    """``ProcessGroupNCCL.Options``: accepted by ``init_process_group``/``new_group`` and dropped.

    Its settings pick CUDA stream priorities, NCCL kernel shapes and communicator splitting;
    gloo on the host has none of those, and none of them changes a collective's result.
    """

    def __init__(self, is_high_priority_stream: bool = False) -> None:
        self.backend = "nccl"
        self.is_high_priority_stream = is_high_priority_stream
        self._timeout = NCCL_DEFAULT_TIMEOUT
        self.config = _NCCLConfig()
        self.split_from = None
        self.split_color = 0
        self.global_ranks_in_group: list[int] = []
        self.group_name = ""


class ProcessGroupNCCL:
    """The name ``torch.distributed.ProcessGroupNCCL`` for code that configures NCCL groups.

    Groups are created through ``init_process_group``/``new_group`` (they run on gloo); building
    a ProcessGroupNCCL backend object directly needs the NCCL library and raises.
    """

    NCCL_CTA_POLICY_DEFAULT = 0
    NCCL_CTA_POLICY_EFFICIENCY = 1
    NCCL_CTA_POLICY_ZERO = 2
    Options = _NCCLOptions
    NCCLConfig = _NCCLConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "ProcessGroupNCCL cannot be constructed directly on the emulated cuda devices: there is no "
            "NCCL library. Create the group with torch.distributed.init_process_group('nccl') or "
            "new_group(backend='nccl'); torchdevice runs it on gloo."
        )


ProcessGroupNCCL.__module__ = "torch.distributed.distributed_c10d"
ProcessGroupNCCL.__qualname__ = "ProcessGroupNCCL"


# --- backend choice -------------------------------------------------------------------------

_announced = False
_announce_lock = threading.Lock()


def gloo_backend_for(backend: Any) -> str | None:
    """The backend string to create instead of ``backend``, or None to create it as asked.

    NCCL becomes gloo. A cuda entry that ends up on gloo also gets a cpu entry: the native
    fallback runs collectives on emulated cuda tensors through the group's *CPU* backend.
    ``backend=None`` ("undefined") means the accelerator's default backend, NCCL for cuda.
    """
    from torch.distributed.distributed_c10d import Backend

    name = str(backend).strip().lower()
    if name in ("", Backend.UNDEFINED):
        accelerator = torch._C._get_accelerator().type
        return Backend.GLOO if Backend.default_device_backend_map.get(accelerator) == Backend.NCCL else None
    if ":" not in name:
        return Backend.GLOO if name == Backend.NCCL else None
    pairs: dict[str, str] = {}
    for part in name.split(","):
        device, _, device_backend = part.partition(":")
        pairs[device.strip()] = device_backend.strip()
    if Backend.NCCL not in pairs.values() and not (pairs.get(_TYPE) == Backend.GLOO and "cpu" not in pairs):
        return None
    pairs = {device: Backend.GLOO if b == Backend.NCCL else b for device, b in pairs.items()}
    if pairs.get(_TYPE) == Backend.GLOO:
        pairs.setdefault("cpu", Backend.GLOO)
    if set(pairs) <= {"cpu", _TYPE} and set(pairs.values()) == {Backend.GLOO}:
        return Backend.GLOO
    return ",".join(f"{device}:{b}" for device, b in pairs.items())


def _announce(asked: Any, created: str) -> None:
    """One INFO line per process when NCCL is replaced; DEBUG for every later group."""
    global _announced
    asked_text = str(asked)
    if asked_text in ("", "undefined"):
        asked_text = "default (nccl for cuda)"
    if "nccl" in asked_text:
        with _announce_lock:
            first, _announced = not _announced, True
        if first:
            # Faithful for results, so INFO: WARNING is kept for what cannot be emulated faithfully.
            logger.info(
                "torch.distributed backend %s runs as %r on the emulated cuda devices: same results as "
                "NCCL, host speed", asked_text, created,
            )
            return
    logger.debug("process group backend %s created as %r", asked_text, created)


def _wrap_new_process_group_helper(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def _new_process_group_helper(*args: Any, **kwargs: Any):
        bound = signature.bind(*args, **kwargs)
        asked = bound.arguments["backend"]
        created = gloo_backend_for(asked)
        if created is not None:
            bound.arguments["backend"] = created
            if isinstance(bound.arguments.get("backend_options"), _NCCLOptions):
                logger.debug("ProcessGroupNCCL.Options dropped: gloo has no NCCL streams or kernels to tune")
                bound.arguments["backend_options"] = None
            _announce(asked, created)
        return original(*bound.args, **bound.kwargs)

    return _new_process_group_helper


# --- collectives ----------------------------------------------------------------------------

def _emulated_tensors(values: Any) -> list[torch.Tensor]:
    """The emulated cuda tensors among ``values`` (tensors, lists and tuples of them, P2POps)."""
    found: list[torch.Tensor] = []
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.is_cuda:
                found.append(v)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dist.P2POp):
            stack.append(v.tensor)
    return found


# Works whose future cannot carry a callback (gloo's point-to-point works), with the tensors
# they use; dropped once the work reports completion.
_pending: list[tuple[Any, list[torch.Tensor]]] = []
_pending_lock = threading.Lock()


def _prune_pending() -> None:
    with _pending_lock:
        _pending[:] = [(work, tensors) for work, tensors in _pending if not work.is_completed()]


def _keep_alive(result: Any, tensors: list[torch.Tensor]) -> None:
    """Hold ``tensors`` until the work(s) in ``result`` complete, as NCCL's work objects do."""
    from torch.distributed.distributed_c10d import _IllegalWork

    works = result if isinstance(result, list) else [result]
    for work in works:
        # _IllegalWork: an op queued in a coalescing context, issued (and waited) as a whole later.
        if not isinstance(work, dist.Work) or isinstance(work, _IllegalWork) or work.is_completed():
            continue
        try:
            future = work.get_future()
        except RuntimeError:  # "Work::getFuture not implemented" (send/recv)
            with _pending_lock:
                _pending.append((work, tensors))
            continue
        # The callback (and with it the tensors) is released once the future has run it.
        future.add_done_callback(lambda _future, _tensors=tensors: None)


# Per thread, the tensors of the collectives queued in each open ``_coalescing_manager``: the
# queue holds them only until the coalesced work is issued, not until it completes.
_coalescing = threading.local()


def _coalescing_stack() -> list[list[torch.Tensor]]:
    if not hasattr(_coalescing, "stack"):
        _coalescing.stack = []
    return _coalescing.stack


def _wrap_coalescing_manager(original: Callable) -> Callable:
    @contextlib.contextmanager
    @functools.wraps(original)
    def _coalescing_manager(*args: Any, **kwargs: Any):
        tensors: list[torch.Tensor] = []
        stack = _coalescing_stack()
        stack.append(tensors)
        try:
            with original(*args, **kwargs) as manager:
                yield manager
        finally:
            stack.pop()
        _keep_alive(manager.works, tensors)

    return _coalescing_manager


def _premul_factor(op: Any) -> Any:
    """The factor of a ``_make_nccl_premul_sum`` op, or None for any other op."""
    # ReduceOp.SUM and friends are RedOpType values (no .op); only made ops carry a factor.
    if getattr(op, "op", None) == dist.ReduceOp.RedOpType.PREMUL_SUM:
        return op.__getstate__()[1]
    return None


def _on_device(factor: Any, tensor: torch.Tensor) -> Any:
    """A premul factor (a number or a tensor) ready to multiply ``tensor``."""
    return factor.to(tensor.device) if isinstance(factor, torch.Tensor) else factor


def _completed_work(works: list[Any]) -> Any:
    """One Work that completes when all of ``works`` have."""
    futures = [w.get_future() for w in works]
    return torch._C._distributed_c10d._create_work_from_future(torch.futures.collect_all(futures))


class _Collectives:
    """The emulations: each gets the original function and its bound arguments, and returns the
    original's result with the temporaries the collective reads (kept alive with the inputs)."""

    def __init__(self, c10d: Any) -> None:
        self.c10d = c10d

    def group_of(self, arguments: dict) -> Any:
        return arguments.get("group") or self.c10d._get_default_group()

    def all_reduce(self, original: Callable, a: dict) -> tuple[Any, list[torch.Tensor]]:
        factor = _premul_factor(a.get("op"))
        if factor is not None:
            a["tensor"].mul_(_on_device(factor, a["tensor"]))
            a["op"] = dist.ReduceOp.SUM
        return original(**a), []

    def reduce(self, original: Callable, a: dict) -> tuple[Any, list[torch.Tensor]]:
        group = self.group_of(a)
        group_dst = self.c10d._canonicalize_group_rank(group, a.get("dst"), a.get("group_dst"), return_global=False)
        factor = _premul_factor(a.get("op"))
        if factor is not None:
            a["op"] = dist.ReduceOp.SUM
        if group.rank() == group_dst:
            if factor is not None:
                a["tensor"].mul_(_on_device(factor, a["tensor"]))
            return original(**a), []
        # ncclReduce reads a non-root rank's tensor and never writes it; gloo uses it as scratch.
        a["tensor"] = a["tensor"] * _on_device(factor, a["tensor"]) if factor is not None else a["tensor"].clone()
        return original(**a), [a["tensor"]]

    def reduce_scatter(self, original: Callable, a: dict) -> tuple[Any, list[torch.Tensor]]:
        factor = _premul_factor(a.get("op"))
        if factor is None:
            return original(**a), []
        a["input_list"] = [t * _on_device(factor, t) for t in a["input_list"]]
        a["op"] = dist.ReduceOp.SUM
        return original(**a), list(a["input_list"])

    def reduce_scatter_single(self, original: Callable, a: dict) -> tuple[Any, list[torch.Tensor]]:
        output, input = a["output"], a["input"]
        factor = _premul_factor(a.get("op"))
        if factor is not None:
            input = input * _on_device(factor, input)
            a["op"] = dist.ReduceOp.SUM
        world = self.group_of(a).size()
        if output.dim() > 0 and tuple(input.shape) == (world, *output.shape):
            # NCCL also takes the stacked layout; gloo checks for the concatenated one.
            input = input.reshape(world * output.shape[0], *output.shape[1:])
        a["input"] = input
        return original(**a), [input]

    def all_gather_single(self, original: Callable, a: dict) -> tuple[Any, list[torch.Tensor]]:
        output, input = a["output_tensor"], a["input_tensor"]
        world = self.group_of(a).size()
        if input.dim() > 0 and tuple(output.shape) == (world, *input.shape) and output.is_contiguous():
            # The stacked layout NCCL accepts, as the concatenated view gloo checks for.
            a["output_tensor"] = output.view(world * input.shape[0], *input.shape[1:])
        return original(**a), []

    def all_gather(self, original: Callable, a: dict) -> tuple[Any, list[torch.Tensor]]:
        tensor_list, tensor = a["tensor_list"], a["tensor"]
        if all(t.shape == tensor.shape for t in tensor_list):
            return original(**a), []
        # Different sizes per rank: ProcessGroupNCCL gathers them with one broadcast per rank.
        self.c10d._ensure_all_tensors_same_dtype(tensor_list, tensor)
        group = a.get("group")
        rank = self.group_of(a).rank()
        works = []
        for source, out in enumerate(tensor_list):
            if source == rank:
                out.copy_(tensor)
            works.append(self.c10d.broadcast(out, group=group, async_op=True, group_src=source))
        if a.get("async_op"):
            return _completed_work(works), []
        for work in works:
            work.wait()
        return None, []


# Collectives with an emulation (a _Collectives method of the same name). The older names
# (all_gather_into_tensor, reduce_scatter_tensor, _all_gather_base, ...) call these.
_EMULATED = ("all_reduce", "reduce", "reduce_scatter", "reduce_scatter_single", "all_gather_single", "all_gather")

# Collectives that only need their tensors kept alive while asynchronous.
_KEEP_ALIVE_ONLY = (
    "broadcast",
    "all_reduce_coalesced",
    "all_gather_coalesced",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "isend",
    "irecv",
    "batch_isend_irecv",
)


def _wrap_collective(c10d: Any, original: Callable, emulate: Callable | None) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def collective(*args: Any, **kwargs: Any):
        tensors = _emulated_tensors((*args, *kwargs.values()))
        if not tensors:
            return original(*args, **kwargs)
        _prune_pending()
        if emulate is None or torch.overrides.has_torch_function(tuple(tensors)):
            result = original(*args, **kwargs)
        else:
            arguments = dict(signature.bind(*args, **kwargs).arguments)
            if c10d._rank_not_in_group(arguments.get("group")):
                return original(*args, **kwargs)  # torch warns and returns
            result, temporaries = emulate(original, arguments)
            tensors.extend(temporaries)
        stack = _coalescing_stack()
        if stack:
            stack[-1].extend(tensors)
        _keep_alive(result, tensors)
        return result

    return collective


def _wrap_functional_result(funcol: Any, original: Callable) -> Callable:
    @functools.wraps(original)
    def _maybe_wrap_tensor(self: torch.Tensor) -> torch.Tensor:
        # Functional collectives (DTensor, tensor parallelism) hand back their output before gloo
        # has finished, and the caller may drop a temporary input meanwhile. Waiting here, while
        # the collective's frame still holds its inputs, keeps them valid; the result is the same
        # AsyncCollectiveTensor, already complete.
        if isinstance(self, torch.Tensor) and self.is_cuda and not funcol._are_we_tracing():
            funcol.wait_tensor(self)
        return original(self)

    return _maybe_wrap_tensor


def _patch_functional_collectives(funcol: Any) -> None:
    REGISTRY.patch(
        funcol, "_maybe_wrap_tensor", _wrap_functional_result(funcol, funcol._maybe_wrap_tensor), owner=OWNER
    )


def apply_patches() -> None:
    if not dist.is_available():
        return
    import torch.distributed.constants as constants
    import torch.distributed.distributed_c10d as c10d

    REGISTRY.patch(c10d, "_NCCL_AVAILABLE", True, owner=OWNER)
    REGISTRY.patch(c10d, "ProcessGroupNCCL", ProcessGroupNCCL, owner=OWNER)
    REGISTRY.patch(dist, "ProcessGroupNCCL", ProcessGroupNCCL, owner=OWNER)
    for module in (c10d, constants):
        if not isinstance(getattr(module, "default_pg_nccl_timeout", None), datetime.timedelta):
            REGISTRY.patch(module, "default_pg_nccl_timeout", NCCL_DEFAULT_TIMEOUT, owner=OWNER)

    REGISTRY.patch(
        c10d, "_new_process_group_helper", _wrap_new_process_group_helper(c10d._new_process_group_helper), owner=OWNER
    )

    emulations = _Collectives(c10d)
    for name in (*_EMULATED, *_KEEP_ALIVE_ONLY):
        original = getattr(c10d, name, None)
        if original is None:
            continue
        emulate = getattr(emulations, name) if name in _EMULATED else None
        wrapper = _wrap_collective(c10d, original, emulate)
        # Both namespaces: torch.distributed re-exports the functions, and c10d's own helpers
        # (all_gather_into_tensor -> all_gather_single, ...) call them through module globals.
        REGISTRY.patch(c10d, name, wrapper, owner=OWNER)
        if getattr(dist, name, None) is original:
            REGISTRY.patch(dist, name, wrapper, owner=OWNER)

    coalescing_manager = _wrap_coalescing_manager(c10d._coalescing_manager)
    REGISTRY.patch(c10d, "_coalescing_manager", coalescing_manager, owner=OWNER)
    REGISTRY.patch(dist, "_coalescing_manager", coalescing_manager, owner=OWNER)

    call_after_import("torch.distributed._functional_collectives", _patch_functional_collectives,
                      "distributed: could not patch torch.distributed._functional_collectives")

