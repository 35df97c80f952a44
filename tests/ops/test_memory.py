"""torch.cuda memory management, checked against what CUDA's caching allocator reports.

Expected values come from torch/cuda/memory.py and the CUDA caching allocator: byte counters
are exact, ``memory_stats`` is an ``OrderedDict`` sorted by key with CUDA's key names, peaks
reset to the current value, a per-process fraction caps allocations with
``torch.cuda.OutOfMemoryError``. The emulated allocator caches nothing, so reserved == allocated.
"""

from __future__ import annotations

import collections
import gc
import os
import warnings

import pytest
import torch

MiB = 1024 * 1024

STAT_ARRAYS = (
    "allocation",
    "segment",
    "active",
    "inactive_split",
    "allocated_bytes",
    "reserved_bytes",
    "active_bytes",
    "inactive_split_bytes",
    "requested_bytes",
)
POOLS = ("all", "small_pool", "large_pool")
METRICS = ("current", "peak", "allocated", "freed")
# The keys torch.cuda.memory_stats() has on a GPU (CUDACachingAllocator's DeviceStats).
CUDA_KEYS = (
    {f"{a}.{p}.{m}" for a in STAT_ARRAYS for p in POOLS for m in METRICS}
    | {f"oversize_{k}.{m}" for k in ("allocations", "segments") for m in METRICS}
    | {"num_alloc_retries", "num_ooms", "num_sync_all_streams", "num_device_alloc", "num_device_free", "max_split_size"}
)


def test_memory_allocated_counts_exact_bytes(cuda_memory_baseline):
    x = torch.empty(1024, dtype=torch.float32, device="cuda")
    assert torch.cuda.memory_allocated() == cuda_memory_baseline + 4096
    assert torch.cuda.memory_allocated("cuda:0") == torch.cuda.memory_allocated(0) == torch.cuda.memory_allocated()
    del x
    assert torch.cuda.memory_allocated() == cuda_memory_baseline


def test_reserved_equals_allocated_without_a_cache(cuda_memory_baseline):
    x = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
    assert torch.cuda.memory_reserved() == torch.cuda.memory_allocated()
    torch.cuda.empty_cache()  # nothing cached: counters unchanged, as after empty_cache with no free blocks
    assert torch.cuda.memory_allocated() == cuda_memory_baseline + 3 * MiB
    del x
    assert torch.cuda.memory_reserved() == torch.cuda.memory_allocated() == cuda_memory_baseline


def test_peaks_and_their_reset(cuda_memory_baseline):
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == cuda_memory_baseline
    x = torch.empty(2 * MiB, dtype=torch.uint8, device="cuda")
    del x
    assert torch.cuda.max_memory_allocated() == cuda_memory_baseline + 2 * MiB
    assert torch.cuda.max_memory_reserved() == cuda_memory_baseline + 2 * MiB
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == cuda_memory_baseline
    y = torch.empty(MiB, dtype=torch.uint8, device="cuda")
    with pytest.warns(FutureWarning):  # deprecated alias of reset_peak_memory_stats, as in torch
        torch.cuda.reset_max_memory_allocated()
    assert torch.cuda.max_memory_allocated() == cuda_memory_baseline + MiB
    del y


def test_memory_stats_has_cudas_keys_sorted():
    x = torch.empty(10, device="cuda")
    stats = torch.cuda.memory_stats()
    assert isinstance(stats, collections.OrderedDict)
    assert list(stats) == sorted(stats)
    assert set(stats) == CUDA_KEYS
    assert all(isinstance(v, int) for v in stats.values())
    assert stats["allocated_bytes.all.current"] == torch.cuda.memory_allocated()
    assert stats["max_split_size"] == -1  # "no limit", CUDA's default
    assert stats["active.all.current"] >= 1
    del x


def test_memory_stats_pools_split_at_one_mib(cuda_memory_baseline):
    before = torch.cuda.memory_stats()
    small = torch.empty(MiB, dtype=torch.uint8, device="cuda")  # <= 1 MiB: small pool
    large = torch.empty(MiB + 1, dtype=torch.uint8, device="cuda")
    after = torch.cuda.memory_stats()
    assert after["allocated_bytes.small_pool.current"] - before["allocated_bytes.small_pool.current"] == MiB
    assert after["allocated_bytes.large_pool.current"] - before["allocated_bytes.large_pool.current"] == MiB + 1
    assert after["allocation.all.current"] - before["allocation.all.current"] == 2
    assert after["requested_bytes.all.current"] - before["requested_bytes.all.current"] == 2 * MiB + 1
    del small, large


def test_memory_stats_as_nested_dict():
    nested = torch.cuda.memory_stats_as_nested_dict()
    assert set(nested["allocated_bytes"]) == set(POOLS)
    assert set(nested["allocated_bytes"]["all"]) == set(METRICS)
    assert nested["allocated_bytes"]["all"]["current"] == torch.cuda.memory_allocated()
    assert set(nested["oversize_allocations"]) == set(METRICS)


@pytest.mark.parametrize("numel", [1, 16, 32767, 32768, 300_000])  # 4 B ... 1.2 MB: both ways outputs are adopted
def test_kernel_outputs_are_counted_exactly_until_freed(cuda_memory_baseline, numel):
    x = torch.ones(numel, device="cuda")
    base = torch.cuda.memory_allocated()
    allocations = torch.cuda.memory_stats()["allocation.all.allocated"]
    y = x + x  # the CPU kernel allocates the output; the device adopts it
    assert torch.cuda.memory_allocated() == base + 4 * numel
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == allocations + 1
    assert y.device == torch.device("cuda:0") and y.untyped_storage().device == y.device
    del y
    assert torch.cuda.memory_allocated() == base


def test_kernel_outputs_on_the_second_device_are_counted_there(run_snippet):
    out = run_snippet(
        """
        for numel in (16, 300_000):
            x = torch.ones(numel, device="cuda:1")
            base0, base1 = torch.cuda.memory_allocated(0), torch.cuda.memory_allocated(1)
            y = x * 2
            print(torch.cuda.memory_allocated(0) - base0, torch.cuda.memory_allocated(1) - base1, y.device)
            del y
            print(torch.cuda.memory_allocated(1) - base1)
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.split("\n")[:4] == ["0 64 cuda:1", "0", "0 1200000 cuda:1", "0"]


def test_counters_stay_exact_with_several_threads(run_snippet):
    # The first thread to count owns the counters' lock; the others revoke that while it runs.
    out = run_snippet(
        """
        import threading
        x = torch.ones(16, device="cuda")
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        def work():
            for _ in range(3000):
                y = x + x
                del y
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        work()
        for t in threads:
            t.join()
        print(torch.cuda.memory_allocated() - base, torch.cuda.max_memory_allocated() - base <= 4 * 64)
        """
    )
    assert out.split()[:2] == ["0", "True"]


def test_a_forked_child_frees_inherited_tensors_without_waiting_for_the_parents_lock(run_snippet):
    # The parent's lock owner does not exist in the child: the child must not wait for it. (As on
    # a GPU, the child of an initialized parent cannot compute on cuda; it can still free.)
    out = run_snippet(
        """
        import gc, os, threading, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: intended here
        x = torch.ones(16, device="cuda")
        y = x + x  # the main thread now owns the counters' lock
        codes = []
        def fork_here():
            pid = os.fork()
            if pid == 0:
                try:
                    x * 3
                    os._exit(2)
                except torch.AcceleratorError:
                    pass
                globals().pop("x")
                globals().pop("y")
                gc.collect()  # the frees go through the allocator's counters
                os._exit(0 if torch.cuda.memory_allocated() == 0 else 1)
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        t = threading.Thread(target=fork_here)
        t.start()
        t.join(timeout=60)
        print(codes)
        """
    )
    assert out.strip() == "[0]"


def test_reset_accumulated_memory_stats():
    x = torch.empty(16, device="cuda")
    del x
    assert torch.cuda.memory_stats()["allocation.all.freed"] > 0
    torch.cuda.reset_accumulated_memory_stats()
    stats = torch.cuda.memory_stats()
    assert stats["allocation.all.allocated"] == stats["allocation.all.freed"] == 0
    assert stats["num_ooms"] == 0
    # Current values are not accumulated stats and survive the reset.
    assert stats["allocated_bytes.all.current"] == torch.cuda.memory_allocated()


def test_memory_stats_for_a_bad_device_raise_like_cuda():
    with pytest.raises(RuntimeError, match="Invalid device argument 5: did you call init?"):
        torch.cuda.memory_stats(5)


def test_memory_summary_formats_the_stats():
    x = torch.empty(MiB, dtype=torch.uint8, device="cuda")
    summary = torch.cuda.memory_summary()
    assert "PyTorch CUDA memory summary, device ID 0" in summary
    assert "Allocated memory" in summary and "Requested memory" in summary
    assert "CUDA OOMs: 0" in summary
    assert torch.cuda.memory_summary(abbreviated=True)
    del x


def test_memory_snapshot_shapes():
    torch.cuda.memory._record_memory_history(enabled=None)
    kept = torch.empty(10, device="cuda")
    snapshot = torch.cuda.memory._snapshot()
    assert torch.cuda.memory_snapshot() == snapshot["segments"]
    assert kept.data_ptr() in {s["address"] for s in snapshot["segments"]}
    keys = {"device", "address", "total_size", "allocated_size", "active_size", "requested_size", "stream",
            "segment_type", "segment_pool_id", "is_expandable", "frames", "blocks"}
    assert all(keys <= set(s) for s in snapshot["segments"])
    assert snapshot["device_traces"] == [[] for _ in range(torch.cuda.device_count())]
    torch.cuda.memory._record_memory_history(enabled="all")
    torch.cuda.memory._record_memory_history(enabled=None)


def test_list_gpu_processes_reports_this_process():
    text = torch.cuda.list_gpu_processes()
    lines = text.splitlines()
    assert lines[0] == "GPU:0"
    assert f"process {os.getpid():>10d} uses" in lines[1] and lines[1].endswith("MB GPU memory")


def test_mem_get_info_follows_the_allocator(cuda_memory_baseline):
    free, total = torch.cuda.mem_get_info()
    assert total == torch.cuda.get_device_properties(0).total_memory
    context = total - torch.cuda.memory_reserved() - free  # what the CUDA context would hold
    assert 0 < context <= 512 * MiB
    x = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
    assert torch.cuda.mem_get_info(0) == (free - 4 * MiB, total)
    assert torch.cuda.memory.mem_get_info("cuda:0") == (free - 4 * MiB, total)
    del x
    assert torch.cuda.device_memory_used() == torch.cuda.memory_reserved() + context
    with pytest.raises(torch.AcceleratorError, match="invalid device ordinal"):
        torch.cuda.mem_get_info(3)
    # CUDA's guard takes only -1 as the current device; -2 is an ordinal cudaSetDevice refuses.
    assert torch.cuda.mem_get_info(-1)[1] == total
    with pytest.raises(torch.AcceleratorError, match="invalid device ordinal"):
        torch.cuda.mem_get_info(-2)


def test_per_process_memory_fraction_limits_and_recovers(cuda_memory_baseline, restore_memory_fraction):
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = (cuda_memory_baseline + 8 * MiB) / total
    torch.cuda.set_per_process_memory_fraction(fraction)
    assert torch.cuda.get_per_process_memory_fraction() == pytest.approx(fraction)
    ooms = torch.cuda.memory_stats()["num_ooms"]
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"CUDA out of memory\. Tried to allocate 16\.00 MiB"):
        torch.empty(16 * MiB, dtype=torch.uint8, device="cuda")
    assert torch.cuda.memory_stats()["num_ooms"] == ooms + 1
    assert torch.cuda.memory_allocated() == cuda_memory_baseline  # the failed allocation left nothing behind
    # The process stays usable: the next allocation under the limit succeeds.
    x = torch.ones(4 * MiB, dtype=torch.uint8, device="cuda")
    assert int(x.sum()) == 4 * MiB
    del x


def test_memory_fraction_argument_checks_are_torchs(restore_memory_fraction):
    with pytest.raises(TypeError, match="Invalid type for fraction argument, must be `float`"):
        torch.cuda.set_per_process_memory_fraction(1)
    with pytest.raises(ValueError, match="Invalid fraction value: 1.5. Allowed range: 0~1"):
        torch.cuda.set_per_process_memory_fraction(1.5)


def test_out_of_memory_error_is_a_runtime_error():
    # Real CUDA: torch.cuda.OutOfMemoryError is torch.OutOfMemoryError, a RuntimeError.
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)


def test_caching_allocator_alloc_and_delete(cuda_memory_baseline):
    ptr = torch.cuda.caching_allocator_alloc(MiB)
    assert isinstance(ptr, int) and ptr != 0
    assert torch.cuda.memory_allocated() == cuda_memory_baseline + MiB
    torch.cuda.caching_allocator_delete(ptr)
    assert torch.cuda.memory_allocated() == cuda_memory_baseline
    with pytest.raises(RuntimeError, match="invalid device pointer"):
        torch.cuda.caching_allocator_delete(ptr)
    with torch.cuda.memory.caching_allocator_disabled():
        assert torch.cuda.get_allocator_backend() == "native"


def test_accelerator_memory_api_reads_the_same_counters(cuda_memory_baseline):
    assert torch.accelerator.current_accelerator() == torch.device("cuda")
    x = torch.empty(MiB, dtype=torch.uint8, device="cuda")
    assert torch.accelerator.memory_allocated() == torch.cuda.memory_allocated() == cuda_memory_baseline + MiB
    assert torch.accelerator.memory_reserved() == torch.cuda.memory_reserved()
    assert torch.accelerator.memory_stats()["allocated_bytes.all.current"] == cuda_memory_baseline + MiB
    torch.accelerator.reset_peak_memory_stats()
    assert torch.accelerator.max_memory_allocated() == cuda_memory_baseline + MiB
    assert torch.accelerator.get_memory_info() == torch.cuda.mem_get_info()
    del x


def test_counters_return_to_baseline_after_1000_training_steps(cuda_memory_baseline):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randn(8, 16, device="cuda")
    target = torch.randn(8, 4, device="cuda")
    steady_state = None
    for step in range(1000):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(data), target)
        loss.backward()
        optimizer.step()
        if step == 10:
            steady_state = torch.cuda.memory_allocated()
    # No leak per step: after the optimizer state exists, the count stays put.
    assert torch.cuda.memory_allocated() == steady_state
    assert float(loss.detach()) < 1.5
    del model, optimizer, data, target, loss
    gc.collect()
    assert torch.cuda.memory_allocated() == cuda_memory_baseline
    assert torch.cuda.memory_stats()["active.all.current"] == torch.cuda.memory_stats()["allocation.all.current"]


def test_counters_are_per_device(run_snippet):
    out = run_snippet(
        """
        MiB = 1024 * 1024
        base0, base1 = torch.cuda.memory_allocated(0), torch.cuda.memory_allocated(1)
        x = torch.empty(MiB, dtype=torch.uint8, device="cuda:1")
        print(torch.cuda.memory_allocated(0) - base0, torch.cuda.memory_allocated(1) - base1)
        with torch.cuda.device(1):
            print(torch.cuda.memory_allocated() - base1, torch.cuda.mem_get_info()[0] == torch.cuda.mem_get_info(1)[0])
        torch.cuda.set_per_process_memory_fraction(0.0, 1)
        try:
            torch.empty(1, device="cuda:1")
        except torch.cuda.OutOfMemoryError:
            print("oom on 1")
        print(torch.empty(1, device="cuda:0").device)
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.split("\n")[:4] == ["0 1048576", "1048576 True", "oom on 1", "cuda:0"]


def test_memory_reads_are_silent():
    # torch.cuda memory functions warn about nothing on a GPU; neither may they here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.cuda.memory_allocated()
        torch.cuda.memory_stats()
        torch.cuda.mem_get_info()


def test_more_than_an_exabyte_is_refused_up_front():
    ooms = torch.cuda.memory_stats()["num_ooms"]
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"^CUDA out of memory\. Tried to allocate more than 1EB memory\.$"):
        torch.empty(1024**3 * 8_000_000_000, dtype=torch.int8, device="cuda")
    assert torch.cuda.memory_stats()["num_ooms"] == ooms  # CUDA checks before it counts an OOM


def test_the_cuda_context_keeps_a_share_of_total_memory(cuda_memory_baseline):
    # As on a GPU, PyTorch never gets all of total_memory: two halves do not fit (PyTorch's
    # test_out_of_memory_retry), and mem_get_info's free leaves the context's share out.
    total = torch.cuda.get_device_properties(0).total_memory
    free, _ = torch.cuda.mem_get_info()
    assert 0 < total - cuda_memory_baseline - free <= 512 * MiB
    half = int(total * 0.5)
    a = torch.empty(half, dtype=torch.int8, device="cuda")
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        torch.empty(half, dtype=torch.int8, device="cuda")
    del a
