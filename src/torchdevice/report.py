"""The porting report: where a program depends on CUDA (or MPS), and how its ops were routed.

Started by ``torchdevice run --report PATH.json`` or ``TORCHDEVICE_REPORT=PATH.json``, it records
every distinct call site in the user's code that touched a CUDA- or MPS-specific API, with the
API, ``file:line``, a count and a one-line note on a device-agnostic way to write it:

* device strings and objects: ``Tensor.to('cuda')``, ``Tensor.cuda()``, ``Module.to/cuda``,
  ``device=`` in factories, ``torch.set_default_device``, ``torch.load(map_location=...)``;
* the ``torch.cuda``, ``torch.cuda.amp``, ``torch.cuda.nvtx``, ``torch.mps``,
  ``torch.backends.cuda``/``cudnn``/``mps`` functions and classes, and the cuDNN/cuBLAS flags;
* ``torch.autocast``/``GradScaler`` device types, NCCL (``init_process_group('nccl')``),
  ``DataParallel``, and CUDA-only operators (an aten op with no CPU kernel).

"User code" is the first frame outside torch, torchdevice, installed libraries and the standard
library (``torchdevice.core.callsite``); a call torch makes for its own purposes is not the
user's. ``--include-libraries`` (``TORCHDEVICE_REPORT_LIBRARIES=1``) reports libraries' calls where
the library makes them.

The routing census counts the aten ops that ran, through a ``TorchDispatchMode`` that is pushed
only while the report is on (``TORCHDEVICE_REPORT_OPS=0`` leaves it out), and reads the
allocator's figures (bytes allocated, peak) from the native core.

Nothing of this is installed unless a report or DEBUG logging is asked for: importing this module
changes nothing, and the interception wrappers are registered in ``core.patch.REGISTRY`` (owner
``report``) by :func:`start` only. At DEBUG level the same interception logs each API the first
time a call site uses it. ``torchdevice report PATH.json`` prints a saved report again
(:func:`format_text` needs no torch).
"""

from __future__ import annotations

import atexit
import functools
import glob
import json
import linecache
import logging
import os
import re
import signal
import sys
import threading
import time
import weakref
from typing import Any, Callable

from torchdevice.core import callsite
from torchdevice.core.logger import logger, unfaithful_topics

SCHEMA = "torchdevice-report/1"
REPORT_ENV = "TORCHDEVICE_REPORT"
OPS_ENV = "TORCHDEVICE_REPORT_OPS"
OWNER = "report"
ACCELERATORS = ("cuda", "mps")

CENSUS_MECHANISM = (
    "TorchDispatchMode (torch.utils._python_dispatch), pushed only while the report is on: every aten op "
    "that reaches the dispatcher below autograd, on the thread that started the report and on autograd's "
    "device threads; routes read from the dispatcher's registrations (torch._C._dispatch_dump)"
)
ROUTES = {
    "fallback": "CPU kernel through torchdevice's boxed fallback",
    "fast_path": "CPU kernel through an unboxed fast path (hot ops)",
    "kernel": "torchdevice's own kernel (factories, copies, resizing)",
    "host_route": "CUDA-only composite routed to its CPU form",
    "composite": "composite kernel, no device kernel of its own",
    "cuda_only": "no CPU kernel: CUDA-only operator",
    "device": "real device kernel (nothing emulated)",
}


class Report:
    """What one report collects; :data:`_active` is the report the wrappers feed."""

    def __init__(self, include_libraries: bool, path: str | None) -> None:
        self.include_libraries = include_libraries
        self.path = path
        # The path as given, before {pid}/{rank} expansion: what a forked child writes to.
        self.path_template = path
        self.sites: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.started = time.time()
        self.census: _OpCensus | None = None
        self.finished = False


_active: Report | None = None
_installed = False
_atexit_registered = False
_fork_handler_registered = False


def active() -> Report | None:
    return _active


# ------------------------------------------------------------------------------- recording


def _compiling() -> bool:  # replaced by torch.compiler.is_compiling once torch is there
    return False


def _touch(api: str, device_type: str, note: str) -> None:
    """Record one use of ``api`` by the caller of the wrapper that calls this (two frames up)."""
    report = _active
    if report is None:
        return
    site = callsite.find(sys._getframe(2), report.include_libraries)
    if site is None:
        return
    _record(report, api, device_type, note, site)


def _record(report: Report, api: str, device_type: str, note: str, site: callsite.Site) -> None:
    key = (api, site.file, site.line)
    with report.lock:
        entry = report.sites.get(key)
        first = entry is None
        if first:
            entry = report.sites[key] = {
                "api": api,
                "device_type": device_type,
                "file": site.file,
                "line": site.line,
                "function": site.function,
                "count": 0,
                "note": note,
                "via": [],
            }
        entry["count"] += 1
        if site.via and site.via not in entry["via"]:
            entry["via"].append(site.via)
    if first and logger.isEnabledFor(logging.DEBUG):
        via = f" (via {site.via})" if site.via else ""
        logger.debug("%s at %s%s", api, callsite.format_site(site), via)


# ------------------------------------------------------------------------------- notes

_ACCELERATOR_NAMES = {"current_device": "current_device_index", "set_device": "set_device_index",
                      "mem_get_info": "get_memory_info", "current_allocated_memory": "memory_allocated"}
_SEEDING = ("manual_seed", "manual_seed_all", "seed", "seed_all", "initial_seed")
_NVML = ("utilization", "memory_usage", "temperature", "power_draw", "clock_rate", "device_memory_used")
_GRAPHS = ("graph", "CUDAGraph", "make_graphed_callables", "graph_pool_handle", "is_current_stream_capturing")


def _namespace_note(prefix: str, name: str) -> str:
    vendor = "MPS" if "mps" in prefix else "CUDA"
    if prefix.startswith("torch.backends.cudnn"):
        return "cuDNN setting: other devices ignore it (harmless to keep)"
    if prefix == "torch.backends.cuda":
        if "sdp" in name:
            return "device-agnostic alternative: torch.nn.attention.sdpa_kernel()"
        return "CUDA backend setting: other devices ignore it (harmless to keep)"
    if prefix == "torch.backends.mps" and name == "is_available":
        return "device-agnostic alternative: torch.accelerator.is_available()"
    if prefix.endswith(".amp"):
        if name == "autocast":
            return "device-agnostic alternative: torch.autocast(device.type, ...)"
        if name == "GradScaler":
            return "device-agnostic alternative: torch.amp.GradScaler(device.type)"
        if name in ("custom_fwd", "custom_bwd"):
            return f"device-agnostic alternative: torch.amp.{name}(device_type=device.type)"
    if prefix.endswith(".nvtx"):
        return "profiler annotation: torch.profiler.record_function() works on every device"
    if name in _SEEDING:
        return "device-agnostic alternative: torch.manual_seed() seeds every device"
    if name in _NVML:
        return "NVML reading: no device-agnostic equivalent; the emulated device reads 0"
    if name in _GRAPHS:
        return "CUDA graphs: CUDA-only; torch.compile(mode='reduce-overhead') captures graphs where it can"
    if name in ("Stream", "ExternalStream"):
        return "device-agnostic alternative: torch.Stream(device)"
    if name == "Event":
        return "device-agnostic alternative: torch.Event(device)"
    if name in ("stream", "StreamContext"):
        return "device-agnostic alternative: torch.accelerator.set_stream() / torch.Stream as a context"
    if name in ("device", "device_of"):
        return "device-agnostic alternative: torch.accelerator.device_index(index) as a context"
    alt = _ACCELERATOR_NAMES.get(name, name)
    if alt in _accelerator_api():
        return f"device-agnostic alternative: torch.accelerator.{alt}()"
    if name in ("get_device_name", "get_device_properties"):
        return f"describes the {vendor} device: guard with torch.accelerator.is_available()"
    return f"{vendor}-specific API with no device-agnostic equivalent: guard it by device type"


@functools.lru_cache(maxsize=1)
def _accelerator_api() -> frozenset[str]:
    import torch

    return frozenset(n for n in dir(getattr(torch, "accelerator", object())) if not n.startswith("_"))


_DEVICE_NOTES = {
    "str": "a literal device string: pick the device once (torch.accelerator.current_accelerator()) and pass it",
    "int": "a bare index means a CUDA device: pass a torch.device chosen once",
}
_STATIC_DEVICE_NOTE = (
    "a torch.device for one device type: build it from torch.accelerator.current_accelerator() "
    "(found in the source of a module that ran: building a torch.device runs no Python code to count)"
)
_DEVICE_LITERAL = re.compile(r"""\btorch\.device\(\s*(?:type\s*=\s*)?[rRfFuU]?(["'])(cuda|mps)\b""")


def _static_device_sites(report: Report, seen: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """``torch.device('cuda'...)`` written in the user's modules that ran (not counted: see the note)."""
    kinds = callsite.classifier()
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and kinds.kind(path) == callsite.USER:
            files.add(os.path.abspath(path))
    found = []
    for path in sorted(files):
        for number, text in enumerate(linecache.getlines(path), start=1):
            code = text.split("#", 1)[0]
            match = _DEVICE_LITERAL.search(code)
            if match is None or (path, number) in seen:
                continue
            kind = match.group(2)
            found.append({
                "api": f"torch.device('{kind}')", "device_type": kind, "file": path, "line": number,
                "function": None, "count": None, "note": _STATIC_DEVICE_NOTE, "via": [], "static": True,
            })
    return found


def _device_form(device: Any) -> tuple[str, str, str] | None:
    """(device type, how it was written, its label) for an accelerator device argument; else None."""
    import torch

    if isinstance(device, str):
        text = device.strip().lower()
        kind = text.split(":", 1)[0]
        if kind not in ACCELERATORS:
            return None
        return kind, "str", f"'{kind}:N'" if ":" in text else f"'{kind}'"
    if isinstance(device, torch.device):
        # Not counted where it is used: `device=x.device` is how device-agnostic code is written.
        # A torch.device built from a literal is found where it is built (_static_device_sites).
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        return _default_accelerator(), "int", "<int>"
    return None


def _default_accelerator() -> str:
    import torchdevice

    plan = torchdevice.plan
    return plan.emulated[0] if plan is not None and plan.emulated else "cuda"


# ------------------------------------------------------------------------------- wrappers


def _traced_call(fn: Callable, api: str, device_type: str, note: str) -> Callable:
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        if not _compiling() and _active is not None:
            _touch(api, device_type, note)
        return fn(*args, **kwargs)

    traced.__torchdevice_report__ = True  # type: ignore[attr-defined]
    return traced


def _traced_device_arg(fn: Callable, name: str, pick: Callable[[tuple, dict], Any], always: str | None = None) -> Callable:
    """``fn`` that records a call whose device argument (``pick(args, kwargs)``) is an accelerator.

    ``always``: the API is device-specific by itself (``Tensor.cuda``): recorded with that label
    whatever the argument.
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        if not _compiling() and _active is not None:
            if always is not None:
                _touch(always, "cuda", _DEVICE_NOTES_ALWAYS[always])
            else:
                form = _device_form(pick(args, kwargs))
                if form is not None:
                    device_type, how, label = form
                    _touch(name.format(label), device_type, _DEVICE_NOTES[how])
        return fn(*args, **kwargs)

    traced.__torchdevice_report__ = True  # type: ignore[attr-defined]
    return traced


_DEVICE_NOTES_ALWAYS = {
    "Tensor.cuda()": "device-agnostic alternative: .to(device), with device chosen once (torch.accelerator.current_accelerator())",
    "Module.cuda()": "device-agnostic alternative: .to(device), with device chosen once (torch.accelerator.current_accelerator())",
}


def _jit_alias(original: Any, wrapper: Any) -> None:
    """Keep TorchScript resolving a wrapped torch function to its aten op (its table is keyed by id)."""
    try:
        from torch.jit import _builtins

        table = _builtins._builtin_table
        if table is not None and id(original) in table:
            table[id(wrapper)] = table[id(original)]
    except Exception:  # noqa: BLE001 - a torch without that table: scripting of wrapped calls is unaffected
        pass


def _patch_function(target: Any, name: str, wrapper: Callable) -> None:
    from torchdevice.core.patch import REGISTRY

    original = getattr(target, name)
    REGISTRY.patch(target, name, wrapper, owner=OWNER)
    _jit_alias(original, wrapper)


def _arg(index: int, keyword: str) -> Callable[[tuple, dict], Any]:
    def pick(args: tuple, kwargs: dict) -> Any:
        if keyword in kwargs:
            return kwargs[keyword]
        return args[index] if len(args) > index else None

    return pick


def _kwarg(keyword: str) -> Callable[[tuple, dict], Any]:
    return lambda args, kwargs: kwargs.get(keyword)


def _wrap_class(cls: type, api: str, device_type: str, note: str, condition: Callable[[tuple, dict], bool] | None = None) -> bool:
    """Record constructions of ``cls`` (its own ``__init__`` or ``__new__``), without replacing the class."""
    from torchdevice.core.patch import REGISTRY

    for name in ("__init__", "__new__"):
        original = cls.__dict__.get(name)
        if original is None:
            continue
        fn = original.__func__ if isinstance(original, staticmethod) else original
        if getattr(fn, "__torchdevice_report__", False):
            return False

        @functools.wraps(fn)
        def traced(first, *args, **kwargs):
            if not _compiling() and _active is not None and (condition is None or condition(args, kwargs)):
                _touch(api, device_type, note)
            return fn(first, *args, **kwargs)

        traced.__torchdevice_report__ = True  # type: ignore[attr-defined]
        REGISTRY.patch(cls, name, staticmethod(traced) if name == "__new__" else traced, owner=OWNER)
        return True
    return False


class _SetterProbe:
    """A data descriptor standing in for a flag (``torch.backends.cudnn.benchmark``) that records assignments."""

    def __init__(self, prop: Any, api: str, note: str) -> None:
        self._prop = prop
        self._api = api
        self._note = note
        self.__torchdevice_report__ = True

    def __get__(self, obj, objtype=None):
        return self._prop.__get__(obj, objtype)

    def __set__(self, obj, value) -> None:
        if not _compiling() and _active is not None:
            _touch(self._api, "cuda", self._note)
        self._prop.__set__(obj, value)


_NAMESPACES = (
    ("torch.cuda", "cuda"),
    ("torch.cuda.amp", "cuda"),
    ("torch.cuda.nvtx", "cuda"),
    ("torch.cuda.jiterator", "cuda"),
    ("torch.cuda.comm", "cuda"),
    ("torch.mps", "mps"),
    ("torch.backends.cuda", "cuda"),
    ("torch.backends.mps", "mps"),
)
_OWN_MODULES = ("torch.cuda", "torch.mps", "torch.backends", "torchdevice")
_CUDNN_FUNCTIONS = ("is_available", "version", "flags", "is_acceptable")
_CUDNN_FLAGS = ("benchmark", "deterministic", "enabled", "allow_tf32", "benchmark_limit")
_SKIP_CLASSES = ("cudaStatus", "cuBLASModule", "cuFFTPlanCache", "cuFFTPlanCacheAttrContextProp",
                 "cuFFTPlanCacheManager", "SDPAParams", "SDPBackend")


def _belongs(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.startswith(_OWN_MODULES)


def _wrap_namespace(module_name: str, device_type: str) -> None:
    import importlib
    import inspect
    import types

    from torchdevice.core.patch import REGISTRY

    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a namespace this torch build lacks
        return
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        try:
            obj = getattr(module, name)
        except Exception:  # noqa: BLE001 - lazy attributes that fail on this build
            continue
        if isinstance(obj, types.ModuleType) or not callable(obj) or not _belongs(obj):
            continue
        api = f"{module_name}.{name}()"
        note = _namespace_note(module_name, name)
        if inspect.isclass(obj):
            if issubclass(obj, BaseException) or name in _SKIP_CLASSES or name.endswith(("Tensor", "Storage")):
                continue
            _wrap_class(obj, api, device_type, note)
        elif not getattr(obj, "__torchdevice_report__", False):
            _patch_function(module, name, _traced_call(obj, api, device_type, note))


def _install() -> None:
    """Register every interception wrapper (once per process)."""
    global _installed, _compiling
    if _installed:
        return
    _installed = True
    import torch
    import torch.nn

    from torchdevice.core.patch import REGISTRY

    _compiling = torch.compiler.is_compiling

    for module_name, device_type in _NAMESPACES:
        _wrap_namespace(module_name, device_type)

    # cuDNN: functions and the flags of its module object (class-level descriptors).
    cudnn = torch.backends.cudnn
    for name in _CUDNN_FUNCTIONS:
        fn = getattr(cudnn, name, None)
        if callable(fn):
            REGISTRY.patch(cudnn, name, _traced_call(fn, f"torch.backends.cudnn.{name}()", "cuda",
                                                     _namespace_note("torch.backends.cudnn", name)), owner=OWNER)
    for name in _CUDNN_FLAGS:
        prop = type(cudnn).__dict__.get(name)
        if prop is not None and hasattr(prop, "__set__"):
            REGISTRY.patch(type(cudnn), name, _SetterProbe(prop, f"torch.backends.cudnn.{name} = ...",
                                                           _namespace_note("torch.backends.cudnn", name)), owner=OWNER)
    matmul_cls = type(torch.backends.cuda.matmul)
    original_setattr = matmul_cls.__dict__.get("__setattr__")
    if original_setattr is not None:

        @functools.wraps(original_setattr)
        def __setattr__(self, name, value):
            if not _compiling() and _active is not None:
                _touch(f"torch.backends.cuda.matmul.{name} = ...", "cuda",
                       "cuBLAS setting: other devices ignore it (torch.set_float32_matmul_precision() is device-agnostic)")
            return original_setattr(self, name, value)

        REGISTRY.patch(matmul_cls, "__setattr__", __setattr__, owner=OWNER)

    # Device arguments.
    device_arg = _traced_device_arg
    REGISTRY.patch(torch.Tensor, "cuda", device_arg(torch.Tensor.cuda, "", _arg(1, "device"), always="Tensor.cuda()"), owner=OWNER)
    REGISTRY.patch(torch.Tensor, "to", device_arg(torch.Tensor.to, "Tensor.to({})", _arg(1, "device")), owner=OWNER)
    REGISTRY.patch(torch.nn.Module, "cuda", device_arg(torch.nn.Module.cuda, "", _arg(1, "device"), always="Module.cuda()"), owner=OWNER)
    REGISTRY.patch(torch.nn.Module, "to", device_arg(torch.nn.Module.to, "Module.to({})", _arg(1, "device")), owner=OWNER)
    for name in ("empty", "zeros", "ones", "full", "rand", "randn", "randint", "randperm", "arange", "range",
                 "linspace", "logspace", "eye", "tensor", "as_tensor", "empty_like", "zeros_like", "ones_like",
                 "full_like", "rand_like", "randn_like", "randint_like", "empty_strided", "scalar_tensor",
                 "tril_indices", "triu_indices", "sparse_coo_tensor", "asarray", "frombuffer", "from_file"):
        fn = getattr(torch, name, None)
        if fn is not None:
            _patch_function(torch, name, device_arg(fn, f"torch.{name}(device={{}})", _kwarg("device")))
    _patch_function(torch, "set_default_device",
                    device_arg(torch.set_default_device, "torch.set_default_device({})", _arg(0, "device")))
    _patch_function(torch, "load", device_arg(torch.load, "torch.load(map_location={})", _arg(1, "map_location")))

    # autocast and GradScaler device types.
    def device_type_is_accelerator(args: tuple, kwargs: dict) -> bool:
        value = kwargs.get("device_type", args[0] if args else None)
        return isinstance(value, str) and value in ACCELERATORS

    for device_type in ACCELERATORS:
        _wrap_class_variant(torch.amp.autocast_mode.autocast, f"torch.autocast('{device_type}')", device_type,
                            "device-agnostic alternative: torch.autocast(device.type, ...)",
                            lambda a, k, t=device_type: kwargs_or_first(a, k, "device_type") == t)
        _wrap_class_variant(torch.amp.GradScaler, f"torch.amp.GradScaler('{device_type}')", device_type,
                            "device-agnostic alternative: torch.amp.GradScaler(device.type)",
                            lambda a, k, t=device_type: kwargs_or_first(a, k, "device", "cuda") == t)

    # NCCL and DataParallel.
    try:
        import torch.distributed as dist
    except Exception:  # noqa: BLE001
        dist = None
    if dist is not None and dist.is_available():
        for name in ("init_process_group", "new_group"):
            fn = getattr(dist, name, None)
            if fn is not None:
                index = 0 if name == "init_process_group" else 2
                REGISTRY.patch(dist, name, _traced_backend(fn, f"torch.distributed.{name}(backend='nccl')", _arg(index, "backend")), owner=OWNER)
    _wrap_class(torch.nn.DataParallel, "torch.nn.DataParallel()", "cuda",
                "CUDA-only (and deprecated): DistributedDataParallel works on every device")


_class_variants: dict[type, list[tuple[str, str, str, Callable]]] = {}


def kwargs_or_first(args: tuple, kwargs: dict, keyword: str, default: Any = None) -> Any:
    if keyword in kwargs:
        return kwargs[keyword]
    return args[0] if args else default


def _wrap_class_variant(cls: type, api: str, device_type: str, note: str, condition: Callable[[tuple, dict], bool]) -> None:
    """Several labels for one class's constructor, chosen by its arguments (autocast('cuda') / ('mps'))."""
    variants = _class_variants.setdefault(cls, [])
    variants.append((api, device_type, note, condition))
    if len(variants) > 1:
        return

    def pick(args: tuple, kwargs: dict) -> bool:
        return any(cond(args, kwargs) for _, _, _, cond in variants)

    from torchdevice.core.patch import REGISTRY

    original = cls.__dict__["__init__"]

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if not _compiling() and _active is not None:
            for api_, device_type_, note_, cond in variants:
                if cond(args, kwargs):
                    _touch(api_, device_type_, note_)
                    break
        return original(self, *args, **kwargs)

    __init__.__torchdevice_report__ = True  # type: ignore[attr-defined]
    REGISTRY.patch(cls, "__init__", __init__, owner=OWNER)


def _traced_backend(fn: Callable, api: str, pick: Callable[[tuple, dict], Any]) -> Callable:
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        if not _compiling() and _active is not None:
            backend = pick(args, kwargs)
            if backend is not None and "nccl" in str(backend).lower():
                _touch(api, "cuda", "NCCL is CUDA-only: init_process_group() without a backend picks NCCL for cuda "
                                    "and Gloo for cpu (torch.distributed.get_default_backend_for_device)")
        return fn(*args, **kwargs)

    traced.__torchdevice_report__ = True  # type: ignore[attr-defined]
    return traced


# ------------------------------------------------------------------------------- op census


def _make_census(report: Report):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import torchdevice

    plan = torchdevice.plan
    emulated = plan.emulated[0] if plan is not None and plan.emulated else None
    device_type = emulated or "cuda"
    dispatch_key = "MPS" if device_type == "mps" else "CUDA"
    tensor_type = torch.Tensor

    def route_of(func) -> str:
        if emulated is None:
            return "device"
        try:
            table = torch._C._dispatch_dump(func.name())
        except Exception:  # noqa: BLE001 - an operator the dispatcher cannot describe
            return "fallback"
        device_line = None
        has_cpu = has_composite = False
        for line in table.splitlines():
            if line.startswith(dispatch_key + ":"):
                device_line = line
            elif line.startswith("CPU:"):
                has_cpu = True
            elif line.startswith("Composite"):
                has_composite = True
        if device_line is not None and "host_routes" in device_line:
            return "host_route"
        if device_line is not None and "fast_paths" in device_line:
            return "fast_path"
        if not has_cpu and not has_composite:
            return "cuda_only"
        if device_line is None:
            return "composite" if has_composite else "fallback"
        return "fallback" if ":: (none)" in device_line else "kernel"

    def on_device(args: tuple, kwargs: dict) -> bool:
        # A device argument decides (empty(device=...), _to_copy of a host tensor to the device);
        # otherwise the first tensor does.
        if kwargs:
            device = kwargs.get("device")
            if device is not None:
                return getattr(device, "type", None) == device_type
        for a in args:
            if isinstance(a, tensor_type):
                return a.device.type == device_type
            if isinstance(a, (list, tuple)) and a and isinstance(a[0], tensor_type):
                return a[0].device.type == device_type
        if kwargs:
            for v in kwargs.values():
                if isinstance(v, tensor_type):
                    return v.device.type == device_type
        return False

    class _OpCensusMode(TorchDispatchMode):
        """Counts each aten op, split by whether it ran on the emulated device."""

        def __init__(self) -> None:
            super().__init__()
            self.counting = True
            self.counts: dict[tuple[Any, bool], int] = {}
            self.routes: dict[Any, str] = {}
            self.device_type = device_type

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if self.counting:
                key = (func, on_device(args, kwargs))
                counts = self.counts
                counts[key] = counts.get(key, 0) + 1
                if key[1]:
                    route = self.routes.get(func)
                    if route is None:
                        route = self.routes[func] = route_of(func)
                    if route == "cuda_only":
                        site = callsite.find(sys._getframe(1), report.include_libraries, direct=False)
                        if site is not None:
                            name = func.name()
                            _record(report, f"{name} (operator)", device_type,
                                    f"{name} has no CPU kernel: a CUDA-only operator", site)
            return func(*args, **kwargs)

    return _OpCensusMode()


_OpCensus = Any  # the mode's class is built with torch at hand; see _make_census


# ------------------------------------------------------------------------------- lifecycle


def start(path: str | None = None, include_libraries: bool | None = None, ops: bool | None = None,
          path_template: str | None = None) -> Report:
    """Start recording (installs the wrappers, and the op census when ``ops``); returns the report.

    ``path``: where :func:`finish` writes the JSON (None: nothing is written, as for DEBUG tracing);
    ``path_template``: that path before :func:`expand_path`, if it was expanded.
    """
    global _active, _fork_handler_registered
    if ops is None:
        ops = path is not None and os.environ.get(OPS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    report = _active
    if report is None:
        if include_libraries is None:
            include_libraries = callsite.include_libraries_from_env()
        report = Report(include_libraries, path)
        _install()
    elif path is not None and report.path is None:
        report.path = path  # DEBUG tracing was on already: it becomes this report
    if path is not None:
        report.path_template = path_template or path
    if not _fork_handler_registered:
        _fork_handler_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
    if ops and report.census is None:
        mode = _make_census(report)
        mode.__enter__()
        report.census = mode
    _active = report
    return report


def _after_fork_in_child() -> None:
    # A child of os.fork() inherits the report and the exit handler that writes it: one report per
    # process, so the child writes its own file where the path has {pid}, and nothing otherwise
    # (it would overwrite its parent's).
    report = _active
    if report is not None and report.path is not None:
        template = report.path_template or report.path
        report.path = expand_path(template) if "{pid}" in template else None


def stop() -> dict[str, Any] | None:
    """Stop recording and return the report's data (None if none was running)."""
    global _active
    report = _active
    if report is None:
        return None
    _active = None
    census = report.census
    if census is not None:
        census.counting = False
        try:
            from torch.utils._python_dispatch import _get_current_dispatch_mode

            if _get_current_dispatch_mode() is census:
                census.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - the mode stack is the user's too; leave it as it is
            pass
    return collect(report)


def collect(report: Report, exit_status: int | None = None) -> dict[str, Any]:
    """The report as plain data (the JSON document)."""
    import torch

    import torchdevice

    plan = torchdevice.plan
    with report.lock:
        sites = [dict(s, static=False) for s in report.sites.values()]
    sites += _static_device_sites(report, {(s["file"], s["line"]) for s in sites})
    sites.sort(key=lambda s: (s["file"], s["line"], s["api"]))
    call_sites = []
    for s in sites:
        s["code"] = linecache.getline(s["file"], s["line"]).strip() if not s["file"].startswith("<") else ""
        call_sites.append(s)
    apis: dict[str, int] = {}
    for s in sites:
        apis[s["api"]] = apis.get(s["api"], 0) + (s["count"] or 0)
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "torchdevice": torchdevice.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "exit_status": exit_status,
        "duration_s": round(time.time() - report.started, 3),
        "plan": None if plan is None else {
            "backend": plan.backend, "runner": plan.runner, "emulated": list(plan.emulated), "device_count": plan.device_count,
        },
        "include_libraries": report.include_libraries,
        "call_sites": call_sites,
        "apis": dict(sorted(apis.items(), key=lambda kv: (-kv[1], kv[0]))),
        "census": _census_data(report),
        "runner_cpu_fallbacks": _runner_cpu_fallbacks(plan),
        "unfaithful": [{"topic": t, "message": m} for t, m in unfaithful_topics().items()],
    }
    return data


def _runner_cpu_fallbacks(plan: Any) -> dict[str, int]:
    """Calls of ops the runner has no kernel for, which ran on the CPU (always empty on the cpu runner)."""
    if plan is None or not plan.emulated:
        return {}
    from torchdevice import _C

    return dict(sorted(_C.runner_census(plan.emulated[0]).items(), key=lambda kv: (-kv[1], kv[0])))


def _census_data(report: Report) -> dict[str, Any]:
    census = report.census
    ops: dict[str, Any] | None = None
    if census is not None:
        routes = {name: 0 for name in ROUTES}
        per_op: dict[str, dict[str, Any]] = {}
        host = 0
        for (func, on_dev), count in list(census.counts.items()):
            if not on_dev:
                host += count
                continue
            route = census.routes.get(func) or "fallback"
            routes[route] = routes.get(route, 0) + count
            name = str(func.name())
            entry = per_op.setdefault(name, {"op": name, "route": route, "count": 0})
            entry["count"] += count
        top = sorted(per_op.values(), key=lambda e: (-e["count"], e["op"]))
        ops = {
            "device_type": census.device_type,
            "on_device": sum(routes.values()),
            "on_host": host,
            "routes": {k: v for k, v in routes.items() if v or k in ("fallback", "kernel")},
            "distinct_ops": len(per_op),
            "per_op": top,
        }
    return {
        "mechanism": CENSUS_MECHANISM if census is not None else f"off ({OPS_ENV}=0 or no report)",
        "route_meanings": ROUTES,
        "ops": ops,
        "memory": _memory_data(),
    }


def _memory_data() -> dict[str, Any]:
    import torchdevice

    plan = torchdevice.plan
    out: dict[str, Any] = {}
    if plan is None or not plan.emulated:
        return out
    from torchdevice import _C

    for device_type in plan.emulated:
        for index in range(plan.device_count):
            try:
                stats = _C.memory_stats(device_type, index)
            except Exception:  # noqa: BLE001
                continue
            out[f"{device_type}:{index}"] = {
                "allocated_bytes": int(stats.get("allocated_bytes.all.allocated", 0)),
                "allocations": int(stats.get("allocation.all.allocated", 0)),
                "peak_bytes": int(stats.get("allocated_bytes.all.peak", 0)),
                "current_bytes": int(stats.get("allocated_bytes.all.current", 0)),
            }
    return out


def expand_path(path: str) -> str:
    """``{pid}`` and ``{rank}`` in a report path: one file per process under torchrun or workers."""
    return path.replace("{pid}", str(os.getpid())).replace("{rank}", os.environ.get("RANK", "0"))


_TEMPORARY_SUFFIX = ".tmp"


def write(data: dict[str, Any], path: str) -> None:
    """Write the report atomically: a reader sees the old file or the whole new one.

    A process can end at any instant (``os._exit`` from another thread, a signal). The JSON is
    made before any file exists, so the temporary file lives only for one write and a rename;
    what a process that ended in between left next to ``path`` is removed by the next write.
    """
    text = json.dumps(data, indent=2) + "\n"  # the slow part, before any file exists
    _remove_stale_temporaries(path)
    tmp = f"{path}{_TEMPORARY_SUFFIX}{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _remove_stale_temporaries(path: str) -> None:
    for tmp in glob.glob(glob.escape(path) + _TEMPORARY_SUFFIX + "*"):
        pid = tmp[len(path) + len(_TEMPORARY_SUFFIX):]
        # This process's own name is stale too: it writes one report, and a file of that name
        # can only be from an earlier process that had the same PID.
        if not pid.isdigit() or (int(pid) != os.getpid() and _process_exists(int(pid))):
            continue
        try:
            os.unlink(tmp)
        except OSError:  # removed by another writer meanwhile, or not ours to remove
            pass


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def finish(exit_status: int | None = None, stream=None) -> dict[str, Any] | None:
    """Stop, write the JSON (if the report has a path) and print the text summary to ``stream`` (stderr)."""
    report = _active
    if report is None or report.finished:
        return None
    report.finished = True
    data = stop()
    if data is None:
        return None
    data["exit_status"] = exit_status
    stream = sys.stderr if stream is None else stream
    if report.path is not None:
        try:
            write(data, report.path)
        except OSError as exc:
            print(f"torchdevice: error: cannot write the report to {report.path!r}: {exc.strerror or exc}", file=stream)
        else:
            print(format_text(data, path=report.path), file=stream)
    return data


# What `python` exits with after ^C (KeyboardInterrupt reaching the top): it ends itself by SIGINT,
# which a shell reports as 128 + 2.
SIGINT_EXIT_STATUS = 128 + signal.SIGINT


def exit_code_status(code: Any) -> int:
    """CPython's reading of ``SystemExit.code``: None is 0, an int is itself, anything else is 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def exit_status_of(exc: BaseException) -> int:
    """The status ``python`` exits with when ``exc`` ends the program."""
    if isinstance(exc, SystemExit):
        return exit_code_status(exc.code)
    if isinstance(exc, KeyboardInterrupt):
        return SIGINT_EXIT_STATUS
    return 1


# The exit status at atexit, for a report the environment started (``torchdevice run`` knows it).
# CPython keeps the exception that ended the program in sys.last_value (3.12: last_exc), except
# SystemExit, which it reads and frees before running atexit handlers. So while the report is on,
# sys.exit is wrapped, and each SystemExit it raises carries an _ExitWatch: freed with no Python
# frame running, the exception was freed by CPython's top level, and its status is the process's;
# freed while Python code runs, an `except` handled it and the program went on.
_exit_watch: Callable[[], Any] | None = None
_exit_ended: int | None = None


class _ExitWatch:
    def __init__(self, status: int) -> None:
        self.status = status

    def __del__(self, _getframe: Callable[[], Any] = sys._getframe) -> None:  # bound now: may run late in finalization
        global _exit_ended
        _exit_ended = self.status if _getframe().f_back is None else None


def _watched_exit(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def exit(*args: Any) -> None:
        global _exit_watch
        try:
            original(*args)
        except SystemExit as exc:
            watch = _ExitWatch(exit_status_of(exc))
            exc.__torchdevice_exit_watch__ = watch  # type: ignore[attr-defined]
            _exit_watch = weakref.ref(watch)
            del watch  # the exception alone keeps it alive
            raise

    exit.__torchdevice_report__ = True  # type: ignore[attr-defined]
    return exit


def _exit_status_at_exit() -> int:
    if _exit_ended is not None:
        return _exit_ended
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    tb = getattr(last, "__traceback__", None)
    if tb is not None and tb.tb_frame.f_back is None:
        # An exception printed at the top (not one PyErr_Print showed for a callback, called from Python).
        return exit_status_of(last)
    watch = _exit_watch() if _exit_watch is not None else None
    if watch is not None:
        return watch.status  # the SystemExit is still alive: in a reference cycle, or kept by the program
    return 0


def _finish_at_exit() -> None:
    finish(exit_status=_exit_status_at_exit())


def start_from_env(path: str | None) -> Report:
    """The report ``TORCHDEVICE_REPORT`` asks for (written at exit), or DEBUG tracing without one."""
    global _atexit_registered
    template = path
    if path is not None:
        path = expand_path(path)
        try:
            import multiprocessing

            if multiprocessing.parent_process() is not None and "{pid}" not in os.environ.get(REPORT_ENV, ""):
                path = None  # a worker (DataLoader, spawn): the parent writes the report, not each child
        except Exception:  # noqa: BLE001
            pass
    report = start(path, path_template=template)
    if path is not None and not _atexit_registered:
        _atexit_registered = True
        from torchdevice.core.patch import REGISTRY

        REGISTRY.patch(sys, "exit", _watched_exit(sys.exit), owner=OWNER)
        atexit.register(_finish_at_exit)
    return report


# ------------------------------------------------------------------------------- text


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_text(data: dict[str, Any], path: str | None = None, cwd: str | None = None) -> str:
    """A saved or fresh report as text (no torch needed)."""
    cwd = cwd or data.get("cwd") or os.getcwd()
    plan = data.get("plan") or {}
    emulated = ", ".join(plan.get("emulated") or []) or "nothing"
    sites = data.get("call_sites") or []
    files: dict[str, list[dict[str, Any]]] = {}
    for s in sites:
        files.setdefault(s["file"], []).append(s)
    lines = [
        f"torchdevice porting report (torchdevice {data.get('torchdevice')}, torch {data.get('torch')}; "
        f"emulating {emulated} on {plan.get('runner', '?')})",
    ]
    if not sites:
        lines.append("no CUDA- or MPS-specific call sites in user code"
                     + ("" if not data.get("include_libraries") else " or libraries"))
    else:
        calls = sum(s["count"] or 0 for s in sites)
        through = sum(1 for s in sites if s.get("via"))
        lines.append(f"{_plural(len(sites), 'call site')} ({_plural(calls, 'call')}) in {_plural(len(files), 'file')} "
                     "use CUDA- or MPS-specific APIs"
                     + (f"; {through} of them are calls made inside libraries, shown at the code's call into them"
                        if through else "")
                     + ("; library code included" if data.get("include_libraries") else ""))
    width = min(max((len(s["api"]) for s in sites), default=0), 48)
    for file, entries in files.items():
        lines.append("")
        lines.append(f"{callsite.display_path(file, cwd)}")
        for s in entries:
            via = f" [inside {', '.join(s['via'])}]" if s.get("via") else ""
            count = "source " if s.get("count") is None else f"x{s['count']:<6}"
            lines.append(f"  {s['line']:>5}  {count} {s['api']:<{width}}  {s['note']}{via}")
    census = data.get("census") or {}
    ops = census.get("ops")
    lines.append("")
    if ops:
        routes = ", ".join(f"{k} {v}" for k, v in ops["routes"].items())
        lines.append(f"routing census ({census.get('mechanism', '').split(' (')[0]}): "
                     f"{ops['on_device']} ops on {ops['device_type']} ({routes}), {ops['on_host']} on the host")
        top = ops.get("per_op") or []
        if top:
            lines.append("  busiest: " + ", ".join(f"{t['op']} x{t['count']} ({t['route']})" for t in top[:5]))
    else:
        lines.append(f"routing census: {census.get('mechanism', 'off')}")
    for device, mem in (census.get("memory") or {}).items():
        lines.append(f"  memory {device}: {_bytes(mem['allocated_bytes'])} allocated in {mem['allocations']} allocations, "
                     f"peak {_bytes(mem['peak_bytes'])}, {_bytes(mem['current_bytes'])} in use at the end")
    fallbacks = data.get("runner_cpu_fallbacks") or {}
    if fallbacks:
        lines.append(f"ops the {plan.get('runner', '?')} runner has no kernel for, run on the CPU: "
                     + ", ".join(f"{op} x{count}" for op, count in fallbacks.items()))
    for item in data.get("unfaithful") or []:
        lines.append(f"not emulated faithfully: {item['message']}")
    if path is not None:
        lines.append(f"report written to {path}")
    return "\n".join(lines)


def load(path: str) -> dict[str, Any]:
    """A saved report; ValueError if the file is not one."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a torchdevice report (no \"schema\": \"{SCHEMA}\")")
    return data
