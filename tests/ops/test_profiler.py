"""torch.profiler's CUDA side on the emulated device (ops/profiler.py, runtime/profiler_stubs.cpp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from torch.profiler import ProfilerActivity, profile


def _training_step(model, x, target, optimizer):
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _profiled(**kwargs):
    torch.manual_seed(0)
    # Sizes whose kernels take microseconds: torch's fallback profiler keeps whole ones.
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(128, 256, device="cuda"), torch.randint(0, 64, (128,), device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], **kwargs) as prof:
        for _ in range(2):
            _training_step(model, x, target, optimizer)
    return prof


# Ops that run a kernel of their own in this step (forward, backward, optimizer, zero_grad).
_KERNEL_OPS = {"aten::addmm", "aten::mm", "aten::relu", "aten::threshold_backward", "aten::_log_softmax",
               "aten::_log_softmax_backward_data", "aten::sum", "aten::_foreach_add_"}
# Ops that run none on a GPU either: views and allocations.
_NO_KERNEL_OPS = {"aten::t", "aten::view", "aten::transpose", "aten::as_strided", "aten::detach", "aten::expand",
                  "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::reshape", "aten::_reshape_alias",
                  "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::resolve_conj", "aten::resolve_neg"}


def test_every_op_has_device_time_within_its_total_time():
    prof = _profiled()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    assert _KERNEL_OPS <= {e.name for e in ops}
    for event in ops:
        # Device time is the time the op's kernels ran, inside its own call: never more than its
        # CPU time (both as the profiler reports them, device time in whole microseconds).
        assert 0 <= event.device_time_total <= event.cpu_time_total, (event.name, event.device_time_total,
                                                                       event.cpu_time_total)
        if event.name in _KERNEL_OPS:
            assert event.device_time_total > 0, event.name
        if event.name in _NO_KERNEL_OPS:
            assert event.device_time_total == 0, event.name
    averages = prof.key_averages()
    assert sum(a.self_device_time_total for a in averages) > 0
    table = averages.table(sort_by="cuda_time_total", row_limit=5)
    assert "CUDA total" in table and "Self CUDA" in table
    totals = [a.device_time_total for a in sorted(averages, key=lambda a: a.device_time_total, reverse=True)]
    assert totals == sorted(totals, reverse=True)


def test_device_time_is_the_kernels_and_ops_inside_a_kernel_add_none():
    x = torch.randn(512, 512, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.profiler.record_function("two matmuls"):
            x @ x
            x @ x
        torch.relu(x)
    events = {e.name: e for e in prof.events()}
    mms = [e for e in prof.events() if e.name == "aten::mm"]
    assert len(mms) == 2 and all(e.device_time_total > 0 for e in mms)
    # A range's device time is its ops' kernels, which the CPU work between them is not.
    assert sum(e.device_time_total for e in mms) - 2 <= events["two matmuls"].device_time_total
    assert events["two matmuls"].device_time_total <= sum(e.device_time_total for e in mms) + 2
    # CPU's relu kernel calls clamp_min: that runs inside relu's kernel, which has the time.
    relu, clamp_min = events["aten::relu"], events["aten::clamp_min"]
    assert clamp_min.cpu_parent is relu and clamp_min.device_time_total == 0
    assert 0 < relu.self_device_time_total <= relu.cpu_time_total


def test_a_queued_sleep_is_device_time_and_timing_stops_with_the_profiler():
    from torchdevice import _C

    cycles = int(2 * torch.cuda.get_device_properties(0).clock_rate)  # 2 ms of spinning
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.profiler.record_function("sleep"):
            torch.cuda._sleep(cycles)
        torch.cuda.synchronize()
        assert _C.kernel_timing()
    assert not _C.kernel_timing()
    sleep = next(e for e in prof.events() if e.name == "sleep")
    # As on a GPU: the spin kernel's 2 ms, although its launch returned at once.
    assert 1900 <= sleep.device_time_total <= 2100, sleep.device_time_total


def test_trace_has_the_device_work_on_a_gpu_row(tmp_path):
    prof = _profiled()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    assert kernels and all(e["pid"] == 0 and e["tid"] == 7 and e["dur"] > 0 for e in kernels)
    names = {e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("pid") == 0 and "name" in e["args"]}
    assert {"GPU 0", "stream 7"} <= names
    cpu_ops = {e["args"]["External id"]: e for e in events if e.get("cat") == "cpu_op"}
    for kernel in kernels:  # within the op that ran it, linked to it
        op = cpu_ops[kernel["args"]["External id"]]
        assert op["ts"] <= kernel["ts"] and kernel["ts"] + kernel["dur"] <= op["ts"] + op["dur"]
    assert any(e.get("cat") == "ac2g" and e["ph"] == "f" for e in events)


def test_profile_memory_reports_device_memory():
    prof = _profiled(profile_memory=True)
    averages = prof.key_averages()
    assert any(a.device_memory_usage > 0 for a in averages if a.key in ("aten::addmm", "aten::mm", "aten::empty"))
    assert "CUDA Mem" in averages.table(row_limit=3)


def test_autograd_profiler_with_use_device_cuda_and_nvtx_ranges():
    x = torch.randn(64, 64, device="cuda")
    with torch.autograd.profiler.profile(use_device="cuda") as prof:
        torch.cuda.nvtx.range_push("my-range")
        (x @ x).relu()
        torch.cuda.nvtx.range_pop()
        with torch.cuda.nvtx.range("scoped"):
            x.sum()
    names = {e.name for e in prof.function_events}
    assert {"my-range", "scoped", "aten::mm"} <= names
    mm = next(e for e in prof.function_events if e.name == "aten::mm")
    assert 0 < mm.device_time_total <= mm.cpu_time_total


def test_no_warning_is_printed(tmp_path):
    code = textwrap.dedent(
        """
        import sys, torchdevice, torch
        from torch.profiler import profile, ProfilerActivity
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()
        optimizer = torch.optim.AdamW(model.parameters())
        x, target = torch.randn(32, 64, device="cuda"), torch.randint(0, 8, (32,), device="cuda")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], profile_memory=True) as p:
            for _ in range(2):
                torch.nn.functional.cross_entropy(model(x), target).backward()
                optimizer.step()
                optimizer.zero_grad()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=2))
        p.export_chrome_trace(sys.argv[1])
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE")}
    env["TORCH_DEVICE_BACKEND"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "trace.json")], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA" in proc.stdout
    assert "Failed to record CUDA event" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-3000:]
    # A CUDA build's kineto, asking the CUDA runtime for device properties at the stop.
    assert "ERROR" not in proc.stderr and "gpuGetDeviceCount" not in proc.stderr, proc.stderr[-3000:]
