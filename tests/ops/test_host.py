"""Host-side torch.cuda: pinned memory, DataLoader pinning, non_blocking copies, NVTX, cudart,
IPC and the NVML sensors, checked against what a GPU machine (with no profiler attached) answers.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset


def test_pin_memory_is_pinned():
    pinned = torch.randn(4, 4).pin_memory()
    assert pinned.is_pinned() and pinned.device.type == "cpu"
    assert pinned[1].is_pinned() and pinned.t().is_pinned()  # views of pinned memory are pinned
    assert not torch.randn(3).is_pinned()
    assert torch.empty(3, pin_memory=True).is_pinned()
    assert torch.zeros(2, pin_memory=True).is_pinned()
    assert not torch.randn(3, device="cuda").is_pinned()


def test_pinning_a_cuda_tensor_raises_like_cuda():
    with pytest.raises(RuntimeError, match="only dense CPU tensors can be pinned"):
        torch.randn(3, device="cuda").pin_memory()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_pin_memory_then_non_blocking_copy(num_workers):
    dataset = TensorDataset(torch.arange(40.0).reshape(20, 2), torch.arange(20))
    loader = DataLoader(dataset, batch_size=8, pin_memory=True, num_workers=num_workers)
    seen = []
    for features, labels in loader:
        assert features.is_pinned() and labels.is_pinned()
        features = features.cuda(non_blocking=True)
        labels = labels.to("cuda", non_blocking=True)
        assert features.device == labels.device == torch.device("cuda", 0)
        seen.append(labels.cpu())
    assert torch.equal(torch.cat(seen), torch.arange(20))


def test_non_blocking_copies_both_ways():
    host = torch.arange(6.0).pin_memory()
    device = host.to("cuda", non_blocking=True)
    torch.cuda.current_stream().synchronize()
    assert torch.equal(device.cpu(), host)
    back = device.to("cpu", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(back, host)
    out = torch.empty(6, device="cuda")
    out.copy_(host, non_blocking=True)
    assert torch.equal(out.cpu(), host)


def test_non_blocking_device_to_host_result_is_pinned():
    assert torch.ones(4, device="cuda").to("cpu", non_blocking=True).is_pinned()


def test_nvtx_answers_as_without_a_profiler():
    # NVTX with no tool attached: push/pop return NVTX_NO_PUSH_POP_TRACKING (-2), ranges id 0.
    assert torch.cuda.nvtx.range_push("step") == -2
    assert torch.cuda.nvtx.range_pop() == -2
    assert torch.cuda.nvtx.mark("here") is None
    range_id = torch.cuda.nvtx.range_start("load")
    assert range_id == 0
    assert torch.cuda.nvtx.range_end(range_id) is None
    with torch.cuda.nvtx.range("forward {}", 1):
        torch.ones(2, device="cuda").sum()


@pytest.mark.parametrize(
    ("call", "argument", "signature"),
    [("range_push", 123, "(arg0: str) -> int"), ("range_start", 1.5, "(arg0: str) -> int"),
     ("mark", ["m"], "(arg0: str) -> None"), ("range_end", "id", "(arg0: int) -> None")],
)
def test_nvtx_refuses_arguments_as_its_binding_does(call, argument, signature):
    binding = {"range_push": "rangePushA", "range_start": "rangeStartA", "mark": "markA", "range_end": "rangeEnd"}[call]
    with pytest.raises(TypeError) as info:
        getattr(torch.cuda.nvtx, call)(argument)
    assert str(info.value) == (
        f"{binding}(): incompatible function arguments. The following argument types are supported:\n"
        f"    1. {signature}\n\nInvoked with: {argument!r}"
    )
    assert torch.cuda.nvtx.range_push(None) == -2 and torch.cuda.nvtx.range_pop() == -2  # NULL is a message


def test_emit_nvtx_and_profiler_contexts():
    with torch.autograd.profiler.emit_nvtx(record_shapes=True):
        (torch.ones(2, device="cuda") * 2).sum()
    context = torch.autograd.profiler.emit_nvtx()
    with context:
        with pytest.raises(RuntimeError, match="not reentrant"):
            context.__enter__()
    with torch.cuda.profiler.profile():
        torch.ones(2, device="cuda").sum()
    torch.cuda.profiler.start()
    torch.cuda.profiler.stop()


def test_cudart_and_check_error():
    cudart = torch.cuda.cudart()
    assert cudart.cudaProfilerStart() == 0 and cudart.cudaProfilerStop() == 0
    assert torch.cuda.check_error(0) is None
    with pytest.raises(torch.cuda.CudaError, match=r"out of memory \(2\)"):
        torch.cuda.check_error(2)
    assert cudart.cudaMemGetInfo(0) == torch.cuda.mem_get_info(0)


def test_ipc_collect_and_sync_debug_mode():
    assert torch.cuda.ipc_collect() is None
    assert torch.cuda.get_sync_debug_mode() == 0
    torch.cuda.set_sync_debug_mode("warn")
    try:
        assert torch.cuda.get_sync_debug_mode() == 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.cuda.get_sync_debug_mode() == 0


@pytest.mark.parametrize("name", ["utilization", "memory_usage", "temperature", "power_draw", "clock_rate"])
def test_nvml_sensors_return_ints(name):
    sensor = getattr(torch.cuda, name)
    assert sensor() == 0 and sensor(0) == 0 and sensor("cuda:0") == 0
    with pytest.raises(torch.AcceleratorError, match="invalid device ordinal"):
        sensor(9)


def test_handles_that_do_not_exist_say_so():
    with pytest.raises(RuntimeError, match="no cuBLAS handle"):
        torch.cuda.current_blas_handle()
    with pytest.raises(RuntimeError, match="no cuSOLVER handle"):
        torch.cuda.current_solver_handle()


def test_tunableop_is_off_and_jiterator_says_why():
    assert torch.cuda.tunable.is_enabled() is False
    assert torch.cuda.tunable.tuning_is_enabled() is False
    assert torch.cuda.tunable.record_untuned_is_enabled() is False
    torch.cuda.tunable.enable(False)
    with pytest.raises(RuntimeError, match="TunableOp tunes GPU GEMM kernels"):
        torch.cuda.tunable.enable(True)
    doubler = torch.cuda.jiterator._create_jit_fn("template <typename T> T twice(T x) { return x + x; }")
    with pytest.raises(RuntimeError, match="jiterator compiles CUDA C\\+\\+ with NVRTC"):
        doubler(torch.ones(2, device="cuda"))


def test_host_memory_stats_count_as_cudas_caching_host_allocator():
    torch._C._host_emptyCache()
    before = torch.cuda.host_memory_stats()
    pinned = torch.empty(40960, dtype=torch.uint8, pin_memory=True)  # rounded up to 64 KiB
    ptr = pinned.data_ptr()
    stats = torch.cuda.host_memory_stats()
    for family in ("allocated_bytes", "active_bytes"):
        assert stats[f"{family}.current"] - before[f"{family}.current"] == 65536
    assert stats["num_host_alloc"] - before["num_host_alloc"] == 1
    assert stats["host_alloc_time.count"] - before["host_alloc_time.count"] == 1
    del pinned
    stats = torch.cuda.host_memory_stats()
    assert stats["active_bytes.current"] == before["active_bytes.current"]
    assert stats["allocated_bytes.current"] - before["allocated_bytes.current"] == 65536  # kept for reuse
    again = torch.empty(50000, dtype=torch.uint8, pin_memory=True)  # same size class: the cached block
    assert again.data_ptr() == ptr and again.is_pinned()
    assert torch.cuda.host_memory_stats()["num_host_alloc"] == stats["num_host_alloc"]
    del again
    torch._C._host_emptyCache()
    stats = torch.cuda.host_memory_stats()
    assert stats["allocated_bytes.current"] == before["allocated_bytes.current"]
    assert stats["num_host_free"] - before["num_host_free"] == 1
    torch.cuda.reset_accumulated_host_memory_stats()
    assert torch.cuda.host_memory_stats()["num_host_alloc"] == 0


def test_cuda_host_register_pins_a_range():
    cudart = torch.cuda.cudart()
    t = torch.ones(20)
    assert not t.is_pinned()
    assert cudart.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0) == 0
    assert t.is_pinned() and t[5:].is_pinned()
    assert cudart.cudaHostRegister(t.data_ptr(), 4, 0) == 712  # cudaErrorHostMemoryAlreadyRegistered
    assert cudart.cudaHostUnregister(t.data_ptr()) == 0
    assert not t.is_pinned()
    assert cudart.cudaHostUnregister(t.data_ptr()) == 713  # cudaErrorHostMemoryNotRegistered


def test_is_pinned_needs_no_cuda_op_first(run_snippet):
    # torch.cuda.cudart() initializes CUDA, which ATen's is_pinned() requires before it asks.
    out = run_snippet(
        """
        t = torch.ones(20)
        torch.cuda.cudart().cudaHostRegister(t.data_ptr(), 80, 0)
        print(t.is_pinned())
        """
    )
    assert out.strip() == "True"


def test_empty_cache_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
