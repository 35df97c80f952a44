"""``torch.compile`` (default backend: inductor) on the emulated GPU.

Inductor generates Triton kernels for ``cuda`` tensors, and Triton needs a real GPU. The memory
of an emulated ``cuda`` tensor is host memory, so inductor's C++/OpenMP CPU code generation is
correct for it: its kernels take raw data pointers, which here are host pointers. This module
routes the ``cuda`` device to that code generation:

* inductor's backend table (``register_backend_for_device``, its public extension API) gets
  ``CppScheduling`` for ``cuda`` and a Python wrapper that calls the C++ kernels without a CUDA
  stream argument and allocates its buffers with ``device='cuda:N'`` (through the emulated
  allocator), so compiled graphs take and return ``cuda`` tensors;
* inductor is told what really runs the kernels wherever it asks: ``cuda`` leaves its list of
  GPU types (``GPU_TYPES``, behind ``is_gpu``: Triton code generation, device guards, stream
  handles) and its backend for ``cuda`` is ``cpp`` (``config.cuda_backend``, behind ``get_current_backend``/``is_triton``),
  and its "is this the host?" predicates (scheduler nodes, IR) answer yes, which keeps GPU-only
  fusions away from C++ kernels. GPU alignment padding is off: it helps tensor cores, not the
  host;
* CUDA graphs (``mode="reduce-overhead"``, ``triton.cudagraphs``) are switched off for compiled
  graphs: cudagraph trees drive the CUDA caching allocator's private pools, which the emulated
  device does not have. The compiled graph runs without them (one debug log line), which is what
  inductor itself does whenever a graph cannot be captured;
* a graph inductor cannot compile runs eagerly, with one warning through the ``torchdevice``
  logger, instead of failing the user's program. For that, the backward graph is compiled
  together with the forward one (inductor otherwise compiles it at the first backward call,
  where a failure could only raise).

Importing inductor takes seconds, so nothing here imports it: ``apply_patches`` only arranges
for ``torch._inductor.compile_fx`` (the entry point of every inductor compilation) to be
wrapped when something imports it, and the backend is installed on the first compilation.
"""

from __future__ import annotations

import copy
import inspect
import logging
import threading
from typing import Any

import torch

from torchdevice.core.after_import import call_after_import
from torchdevice.core.patch import REGISTRY

OWNER = "utils.compile"
_TYPE = "cuda"
_ENTRY_MODULE = "torch._inductor.compile_fx"
# How generated wrappers call their C++ kernels (torchdevice.ops.graphs.launch_kernel).
_LAUNCHER = "launch_cuda_kernel"

logger = logging.getLogger("torchdevice")

# Inductor settings for every compilation (see _emulation_patches).
_EMULATION_CONFIG = {
    # The backend inductor reports for `cuda` (get_current_backend, is_triton): what runs.
    "cuda_backend": "cpp",
    # cudagraph trees need the CUDA caching allocator's private pools (see the module docstring).
    "triton.cudagraphs": False,
    # Padding sizes and strides to GPU memory alignment helps tensor cores, not the host; its
    # benchmark (shape_padding) would time kernels with Triton.
    "shape_padding": False,
    "comprehensive_padding": False,
}

_install_lock = threading.Lock()
_compiling = threading.local()
_backend_installed = False
_cudagraphs_notice_logged = False


def apply_patches() -> None:
    """Arrange for inductor to compile emulated ``cuda`` graphs as host C++ (see the module docstring)."""
    from torchdevice import plan

    if not plan.emulates_cuda or plan.runner != "cpu":
        # Inductor's C++ kernels dereference data pointers on the host: only right when the
        # emulated device's memory is host memory.
        logger.debug("torch.compile: inductor is left as it is (runner %s)", plan.runner)
        return
    # A failure leaves inductor as it is: compilation then fails as it would without torchdevice.
    call_after_import(_ENTRY_MODULE, _wrap_entry_point, "torch.compile: could not route inductor to the emulated device")


def _wrap_entry_point(module: Any) -> None:
    original = module.compile_fx
    signature = inspect.signature(original)

    def compile_fx(*args: Any, **kwargs: Any) -> Any:
        if getattr(_compiling, "active", False):
            # compile_fx calls itself (to apply its config patches); the outermost call has
            # already added this module's settings and will handle a failure.
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.arguments["config_patches"] = _emulation_patches(bound.arguments.get("config_patches"))
        graph = bound.arguments.get("model_", args[0] if args else None)
        # compile_fx takes ownership of the graph module and may rewrite it before failing; a
        # copy of its graph (sharing parameters and submodules) is what runs eagerly then.
        fallback = _eager_copy(graph)
        _compiling.active = True
        try:
            _install_backend()
            # The backward graph is compiled now, with the forward one, not at the first
            # backward call: a graph inductor cannot compile then falls back as a whole, before
            # it runs, instead of failing inside autograd.
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                return original(*bound.args, **bound.kwargs)
        except Exception as error:
            if fallback is None or not _may_fall_back(error):
                raise
            logger.warning(
                "torch.compile: inductor could not compile a graph for the emulated GPU "
                "(%s: %s); that graph runs eagerly",
                type(error).__name__, _first_line(error),
            )
            logger.debug("torch.compile: inductor failure", exc_info=True)
            return fallback
        finally:
            _compiling.active = False

    compile_fx.__doc__ = original.__doc__
    compile_fx.__wrapped__ = original  # type: ignore[attr-defined]
    REGISTRY.patch(module, "compile_fx", compile_fx, owner=OWNER)


def _emulation_patches(config_patches: dict[str, Any] | None) -> dict[str, Any]:
    """``config_patches`` plus the inductor settings that compile emulated ``cuda`` graphs as host code.

    They go into the patches, not just the ambient config: compile_fx re-applies its patches
    around the backward compilation, which happens later, outside this call, and the patched
    config is part of the key of inductor's on-disk cache.
    """
    global _cudagraphs_notice_logged
    from torch._inductor import config

    patches = dict(config_patches or {})
    if patches.get("triton.cudagraphs", config.triton.cudagraphs) and not _cudagraphs_notice_logged:
        _cudagraphs_notice_logged = True
        logger.debug(
            "torch.compile: CUDA graphs (mode='reduce-overhead') are not used on the emulated GPU; "
            "compiled graphs run without them"
        )
    patches.update(_EMULATION_CONFIG)
    return patches


def _eager_copy(graph: Any) -> Any:
    if not isinstance(graph, torch.fx.GraphModule):
        return None
    return torch.fx.GraphModule(graph, copy.deepcopy(graph.graph), class_name=type(graph).__name__)


def _may_fall_back(error: Exception) -> bool:
    """Whether running the graph eagerly is the right answer to ``error``."""
    from torch._dynamo import exc as dynamo_exc
    from torch._inductor.virtualized import V

    if V.aot_compilation:
        return False  # AOTInductor must produce its artifact; a Python callable is no answer
    if isinstance(error, dynamo_exc.BackendCompilerFailed):
        return True  # InductorError: inductor itself failed
    # Dynamo's own control flow (restarts, skipped frames) and the errors it turns into graph
    # breaks or reports as the user's (IndexError) are its to handle.
    passthrough = (dynamo_exc.TorchDynamoException, IndexError, *dynamo_exc.exceptions_allowed_to_be_fallback)
    return not isinstance(error, passthrough)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _install_backend() -> None:
    """Route ``cuda`` to inductor's C++ backend; once, on the first compilation."""
    global _backend_installed
    if _backend_installed:
        return
    with _install_lock:
        if _backend_installed:
            return
        from torch._inductor import ir, scheduler
        from torch._inductor import utils as inductor_utils
        from torch._inductor.codegen import common
        from torch._inductor.codegen.cpp import CppScheduling

        REGISTRY.patch(
            inductor_utils, "GPU_TYPES", [t for t in inductor_utils.GPU_TYPES if t != _TYPE], owner=OWNER
        )
        # Inductor also asks "is this the host?" directly: the scheduler, to keep loop
        # reordering and reindexing (which its C++ code generation does not support) away from
        # C++ kernels, and the IR, for the host's realization thresholds.
        original_ir_is_cpu = ir.is_cpu

        def is_cpu(x: Any) -> bool:
            return original_ir_is_cpu(x) or ir.get_device_type(x) == _TYPE

        REGISTRY.patch(ir, "is_cpu", is_cpu, owner=OWNER)

        def scheduler_node_is_cpu(self: Any) -> bool:
            device = self.get_device()
            return device is not None and device.type in ("cpu", _TYPE)

        REGISTRY.patch(scheduler.BaseSchedulerNode, "is_cpu", scheduler_node_is_cpu, owner=OWNER)
        # Fill the table with inductor's defaults first, so they cannot replace this entry later.
        common.init_backend_registration()
        common.register_backend_for_device(
            _TYPE,
            CppScheduling,
            _wrapper_codegen_class(),
            # No C++ wrapper (cpp_wrapper=True, AOTInductor) or FX wrapper for the emulated
            # device: inductor reports the device as unsupported there, and the graph runs
            # eagerly (see compile_fx above).
            None,
            None,
            device_custom_pass=_codegen_identity(),
        )
        _backend_installed = True
        logger.debug("torch.compile: inductor compiles emulated cuda graphs with its C++ backend")


def _codegen_identity() -> Any:
    """A backend pass that changes nothing and identifies this code generation.

    Inductor puts the ``uuid()`` of each device's backend pass into the key of its on-disk cache
    of compiled graphs: with it, a graph compiled by another version of this module (or, on a
    machine with GPUs, by Triton) is never loaded for the emulated device.
    """
    from torch._inductor.custom_graph_pass import CustomGraphModulePass, get_hash_for_files

    class CodegenIdentity(CustomGraphModulePass):
        def __call__(self, gm: torch.fx.GraphModule) -> None:
            return None

        def uuid(self) -> bytes:
            return get_hash_for_files((__file__,), extra="torchdevice: emulated cuda through C++ codegen")

    return CodegenIdentity()


def _wrapper_codegen_class() -> type:
    """Inductor's Python wrapper codegen, adapted to C++ kernels on ``cuda`` tensors."""
    from torch._inductor.codegen.wrapper import PythonWrapperCodegen, SubgraphPythonWrapperCodegen

    class EmulatedCudaWrapper:
        """Mixin over inductor's wrapper classes (for the graph and for its subgraphs)."""

        def _generate_kernel_call_helper(self, kernel_name: str, call_args: Any, **kwargs: Any) -> None:
            device = kwargs.get("device") or _current_graph_device()
            if not kwargs.get("triton", True) and device.type == _TYPE:
                # A C++ kernel: called without the cudaStream_t argument inductor passes to
                # CUDA C++ kernels, through the launcher that lets a CUDA graph capture it.
                self.writeline(self.wrap_kernel_call(_LAUNCHER, [repr(kernel_name), kernel_name, *call_args]))
                return
            super()._generate_kernel_call_helper(kernel_name, call_args, **kwargs)

        def make_allocation(self, name, device, dtype, shape, stride, allocation_shape=None, is_pinned=False):
            if device.type != _TYPE:
                return super().make_allocation(name, device, dtype, shape, stride, allocation_shape, is_pinned)
            # torch.empty_strided with the buffer's own device: the emulated allocator, and the
            # right device even without the device guard inductor puts around GPU code.
            # (empty_strided_cuda, inductor's fast path, is CUDA's C++ allocator.)
            if allocation_shape is None:
                allocation_shape = shape
            shape_code = self.codegen_python_shape_tuple(shape)
            allocation_code = self.codegen_python_shape_tuple(allocation_shape)
            stride_code = self.codegen_python_shape_tuple(stride)
            line = f"{name} = empty_strided({allocation_code}, {stride_code}, device='{device}', dtype={dtype})"
            if shape_code != allocation_code:
                line += f".as_strided({shape_code}, {stride_code})"
            return line

    class EmulatedCudaSubgraphWrapperCodegen(EmulatedCudaWrapper, SubgraphPythonWrapperCodegen):
        pass

    class EmulatedCudaWrapperCodegen(EmulatedCudaWrapper, PythonWrapperCodegen):
        def write_header(self) -> None:
            super().write_header()
            self.imports.writeline(f"from torchdevice.ops.graphs import launch_kernel as {_LAUNCHER}")

        @staticmethod
        def create(is_subgraph, subgraph_name, parent_wrapper, partition_signatures=None):
            if is_subgraph:
                return EmulatedCudaSubgraphWrapperCodegen(subgraph_name, parent_wrapper, partition_signatures)
            return EmulatedCudaWrapperCodegen()

    return EmulatedCudaWrapperCodegen


def _current_graph_device() -> torch.device:
    from torch._inductor.virtualized import V

    return V.graph.get_current_device_or_throw()
