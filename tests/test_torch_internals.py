"""Every private torch attribute torchdevice relies on exists in the installed torch.

torchdevice reads or wraps some of torch's private functions. A release that renames one must
fail here, by name, instead of silently switching a feature off (torch 2.15 removed
``torch.cuda.graphs._graph_destroy_hooks_active``, and graph destroy hooks stopped firing with
no test failing). Attributes torchdevice *adds* where a build lacks them (``torch._C._cuda_*`` on
the CPU build) are not listed: their absence is expected.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from torchdevice.core.device import torch_has_cuda_build


def _version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


# (module, dotted attribute, since (major, minor), who relies on it)
RELIED_ON = [
    ("torch.cuda._utils", "_get_device_index", (2, 13), "shims/cuda.py: torch.cuda's device-argument parsing"),
    ("torch.cuda", "_lazy_init", (2, 13), "torchdevice.activate"),
    ("torch.cuda", "_sleep", (2, 13), "ops/streams.py"),
    ("torch.cuda", "_maybe_exchange_device", (2, 13), "ops/device.py"),
    ("torch.cuda", "_memory_viz", (2, 13), "ops/memory_history.py"),
    ("torch.cuda.memory", "_record_memory_history", (2, 13), "ops/memory_history.py"),
    ("torch.autograd.graph", "_engine_run_backward", (2, 13), "ops/autograd.py"),
    ("torch._utils", "_import_dotted_name", (2, 13), "ops/legacy_types.py"),
    ("torch.utils._python_dispatch", "TorchDispatchMode", (2, 13), "report.py: the routing census"),
    ("torch._C", "_dispatch_get_registrations_for_dispatch_key", (2, 13), "ops/extensions.py"),
    ("torch._C", "_dispatch_has_kernel_for_dispatch_key", (2, 13), "report.py"),
    ("torch._C", "_jit_override_can_fuse_on_gpu", (2, 13), "utils/jit.py"),
    ("torch._C", "_jit_can_fuse_on_gpu", (2, 13), "utils/jit.py"),
    ("torch._C", "_accelerator_getStream", (2, 13), "ops/streams.py"),
    ("torch._C", "_accelerator_setStream", (2, 13), "ops/streams.py"),
    ("torch._dynamo.device_interface", "CudaInterface", (2, 13), "utils/compile.py"),
    ("torch._inductor.compile_fx", "compile_fx", (2, 13), "utils/compile.py: the entry point it wraps"),
    ("torch._inductor.utils", "GPU_TYPES", (2, 13), "utils/compile.py"),
    ("torch._inductor.ir", "is_cpu", (2, 13), "utils/compile.py"),
    ("torch._inductor.scheduler", "BaseSchedulerNode.is_cpu", (2, 13), "utils/compile.py"),
    ("torch._inductor.codegen.common", "register_backend_for_device", (2, 13), "utils/compile.py"),
    ("torch._inductor.codegen.common", "init_backend_registration", (2, 13), "utils/compile.py"),
    ("torch._inductor.codegen.wrapper", "PythonWrapperCodegen._generate_kernel_call_helper", (2, 13),
     "utils/compile.py"),
    ("torch._inductor.codegen.wrapper", "SubgraphPythonWrapperCodegen", (2, 13), "utils/compile.py"),
    ("torch._inductor.custom_graph_pass", "get_hash_for_files", (2, 13), "utils/compile.py"),
    ("torch._functorch.config", "force_non_lazy_backward_lowering", (2, 13), "utils/compile.py"),
    ("torch.utils._triton", "has_triton", (2, 13), "utils/compile.py"),
    ("torch.distributed.tensor._random", "_PhiloxState", (2, 13), "ops/dtensor_random.py"),
    ("torch.cuda.graphs", "_run_graph_destroy_hooks", (2, 14), "ops/graphs.py: register_graph_destroy_hook"),
    ("torch.mps.streams", "Stream", (2, 15), "shims/mps.py: torch.mps streams"),
]


def _resolve(module_name: str, dotted: str):
    value = importlib.import_module(module_name)
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(("module", "attribute", "since", "user"), RELIED_ON,
                         ids=[f"{m}.{a}" for m, a, _, _ in RELIED_ON])
def test_private_attribute_exists(module, attribute, since, user):
    if _version() < since:
        pytest.skip(f"torch {torch.__version__} predates {module}.{attribute} (torch {since[0]}.{since[1]})")
    try:
        _resolve(module, attribute)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"torch {torch.__version__} has no {module}.{attribute}, which {user} relies on: {error}")


@pytest.mark.skipif(not torch_has_cuda_build(), reason="the CUDA wheel's own CUDA bindings")
def test_cuda_wheel_bindings_torchdevice_wraps_exist():
    # On the CUDA wheel these are torch's (on the CPU build torchdevice adds them).
    for name in ("_cuda_getDeviceCount", "_cuda_memoryStats", "_cuda_memorySnapshot", "_cuda_record_memory_history"):
        assert hasattr(torch._C, name), f"torch {torch.__version__} has no torch._C.{name}"
