"""Device-level torch.cuda API: capability answers (docs/capability-honesty.md) and a survey of
every public name in ``torch.cuda.__all__``.
"""

from __future__ import annotations

import inspect
import os
import warnings

import pytest
import torch

# Features that need a real GPU's machinery and are not emulated: using them raises (they never
# raise AttributeError: the names exist). Listed in docs/capability-honesty.md.
NOT_EMULATED = {
    "MemPool",  # private memory pools and pluggable allocators
    "use_mem_pool",
    "CUDAPluggableAllocator",
    "change_current_allocator",
    "GreenContext",  # SM partitioning
    "current_blas_handle",  # raises: no cuBLAS/cuSOLVER library is loaded
    "current_solver_handle",
}

# A trivial call for each public function that takes arguments.
CALLS_WITH_ARGUMENTS = {
    "caching_allocator_alloc": lambda f: torch.cuda.caching_allocator_delete(f(16)),
    "caching_allocator_delete": lambda f: f(torch.cuda.caching_allocator_alloc(16)),
    "can_device_access_peer": lambda f: f(0, 0),
    "check_error": lambda f: f(0),
    # Each returns a graph hook (torch 2.14); tests/ops/test_graphs.py uses them on captured graphs.
    "export_dot": lambda f: f(os.devnull),
    "export_graph_data": lambda f: f(os.devnull),
    "get_stream_from_external": lambda f: f(0),
    "make_graphed_callables": lambda f: f(lambda x: x * 2, (torch.ones(2, device="cuda"),))(torch.ones(2, device="cuda")),
    "manual_seed": lambda f: f(0),
    "manual_seed_all": lambda f: f(0),
    "set_device": lambda f: f(0),
    "set_per_process_memory_fraction": lambda f: f(1.0),
    "set_rng_state": lambda f: f(torch.cuda.get_rng_state()),
    "set_rng_state_all": lambda f: f(torch.cuda.get_rng_state_all()),
    "set_stream": lambda f: f(torch.cuda.current_stream()),
    "set_sync_debug_mode": lambda f: f(0),
    "stream": lambda f: f(None).__enter__(),
}


def test_capability_answers():
    props = torch.cuda.get_device_properties(0)
    assert (props.major, props.minor) == torch.cuda.get_device_capability() == (8, 0)
    assert torch.cuda.is_bf16_supported() is True
    assert torch.cuda.is_bf16_supported(including_emulation=False) is True  # sm_80 has native bf16
    assert torch.cuda.is_tf32_supported() is True
    assert torch.cuda.get_arch_list() == ["sm_80"]
    assert torch.cuda.get_gencode_flags() == "-gencode compute=compute_80,code=sm_80"
    assert torch.version.cuda is None  # no CUDA toolkit: libraries skip CUDA-compiled extensions
    assert torch.backends.cuda.is_built() is True
    assert torch.cuda._is_compiled() is True


def test_older_capability_follows_cudas_bf16_rule(run_snippet):
    out = run_snippet(
        """
        print(torch.cuda.get_device_capability(), torch.cuda.get_arch_list())
        print(torch.cuda.is_bf16_supported(), torch.cuda.is_bf16_supported(including_emulation=False))
        print(torch.cuda.is_tf32_supported())
        """,
        TORCHDEVICE_CAPABILITY="7.5",
    )
    # Below sm_80 CUDA has bf16 only by emulation, and no tf32.
    assert out.splitlines() == ["(7, 5) ['sm_75']", "True False", "False"]


def test_cudnn_is_honestly_absent_and_its_flags_settable():
    cudnn = torch.backends.cudnn
    assert cudnn.is_available() is False
    assert cudnn.version() is None
    # flags() sets them even where a test harness froze plain assignment (disable_global_flags).
    with cudnn.flags(enabled=False, benchmark=True, deterministic=True, allow_tf32=False):
        assert (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == (False, True, True, False)
        # A convolution still runs (on the host kernel) with the flags set.
        weight = torch.ones(1, 1, 3, 3, device="cuda")
        out = torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4, device="cuda"), weight)
        assert out.device.type == "cuda" and float(out.sum()) == 36.0
    if not torch.backends.flags_frozen():
        saved = cudnn.benchmark
        try:
            cudnn.benchmark = not saved  # plain attributes, as on a GPU build
            assert cudnn.benchmark is (not saved)
        finally:
            cudnn.benchmark = saved


def test_backends_cuda_flags_settable():
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction)
    try:
        matmul.allow_tf32 = True
        matmul.allow_fp16_reduced_precision_reduction = False
        assert matmul.allow_tf32 is True and matmul.allow_fp16_reduced_precision_reduction is False
    finally:
        matmul.allow_tf32, matmul.allow_fp16_reduced_precision_reduction = saved
    assert isinstance(torch.backends.cuda.flash_sdp_enabled(), bool)


def test_device_queries():
    torch.cuda.init()
    assert torch.cuda.is_available() and torch.cuda.is_initialized()
    assert torch.cuda.device_count() == 1 and torch.cuda.current_device() == 0
    assert torch.cuda.can_device_access_peer(0, 0) is False  # as cudaDeviceCanAccessPeer(d, d)
    with pytest.raises(AssertionError, match="Invalid peer device id"):  # torch.cuda's own check
        torch.cuda.can_device_access_peer(0, 3)
    torch.cuda.init()
    assert torch.cuda.synchronize() is None


def test_peer_access_between_two_devices(run_snippet):
    out = run_snippet(
        """
        print(torch.cuda.can_device_access_peer(0, 1), torch.cuda.can_device_access_peer(1, 0))
        with torch.cuda.device(1):
            print(torch.cuda.current_device(), torch._C._cuda_getDevice())
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.splitlines() == ["True True", "1 1"]


def test_no_device_answers_like_a_machine_without_gpus(run_snippet):
    out = run_snippet(
        """
        print(torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_arch_list())
        print(torch.cuda.is_bf16_supported(), torch.cuda.memory_allocated())
        try:
            torch.cuda.current_stream()
        except RuntimeError as e:
            print(e)
        """,
        TORCHDEVICE_DEVICE_COUNT="0",
    )
    assert out.splitlines() == ["False 0 []", "False 0", "No CUDA GPUs are available"]


def test_every_public_name_resolves():
    missing = [name for name in torch.cuda.__all__ if not hasattr(torch.cuda, name)]
    assert missing == []


def _public_functions():
    for name in sorted(torch.cuda.__all__):
        obj = getattr(torch.cuda, name)
        if inspect.isfunction(obj) and name not in NOT_EMULATED:
            yield name


@pytest.mark.parametrize("name", list(_public_functions()))
def test_public_function_answers(name, restore_memory_fraction):
    fn = getattr(torch.cuda, name)
    if name in CALLS_WITH_ARGUMENTS:
        CALLS_WITH_ARGUMENTS[name](fn)
        return
    required = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    assert not required, f"add a trivial call for torch.cuda.{name} to CALLS_WITH_ARGUMENTS"
    with warnings.catch_warnings():
        # Deprecated aliases (memory_cached, reset_max_memory_*) warn as they do on a GPU.
        warnings.simplefilter("ignore", FutureWarning)
        result = fn()
    if name.startswith("caching_allocator_disabled"):
        with result:
            pass


@pytest.mark.parametrize("name", sorted(NOT_EMULATED & set(torch.cuda.__all__)))
def test_not_emulated_features_raise_rather_than_vanish(name):
    # The name exists (no AttributeError); using it raises an explicit error.
    assert hasattr(torch.cuda, name)
    obj = getattr(torch.cuda, name)
    if name in {"current_blas_handle", "current_solver_handle"} or name.startswith(
        ("host_memory_stats", "reset_accumulated_host", "reset_peak_host")
    ):
        with pytest.raises(RuntimeError):
            obj()


def test_dynamo_compiles_code_that_queries_torch_cuda():
    # With the _cuda_* bindings present, torch.cuda._is_compiled() is True and dynamo takes its
    # CUDA-build paths (it imports _cuda_getCurrentRawStream, calls _cuda_getDevice).
    def step(x):
        torch.cuda.current_stream()
        return (x.sin() * 2 + torch.cuda.current_device()).sum()

    x = torch.randn(8, device="cuda")
    compiled = torch.compile(step, backend="aot_eager")
    assert torch.allclose(compiled(x), step(x))
    from torch._dynamo.device_interface import get_interface_for_device

    interface = get_interface_for_device("cuda")
    assert interface.current_device() == 0 and interface.is_available()


def test_runtime_patches_are_registered_under_their_modules():
    from torchdevice import ops
    from torchdevice.core.patch import REGISTRY

    owners = {p.owner for p in REGISTRY}
    for module in ops.MODULES:
        assert module.OWNER == module.__name__.removeprefix("torchdevice.")
    # Every area that replaces something registers it (random and amp need no patch).
    assert {"ops.device", "ops.memory", "ops.storage", "ops.streams", "ops.host"} <= owners


def test_properties_of_one_device_compare_equal():
    # CUDA hands out one properties object per device.
    current = torch.cuda.get_device_properties(torch.cuda.current_device())
    assert current == torch.cuda.get_device_properties(None) == torch.cuda.get_device_properties()


def test_uuid_is_cudas_uuid_object():
    uuid = torch.cuda.get_device_properties(0).uuid
    assert len(str(uuid)) == 36 and str(uuid).count("-") == 4  # 8-4-4-4-12 hex
    assert isinstance(uuid.bytes, list) and len(uuid.bytes) == 16
    assert str(uuid) != "00000000-0000-0000-0000-000000000000"
    assert f"uuid={uuid}" in repr(torch.cuda.get_device_properties(0))
