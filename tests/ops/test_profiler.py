"""torch.profiler's CUDA side on the emulated device (ops/profiler.py, runtime/profiler_stubs.cpp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from torch.profiler import ProfilerActivity, profile


def _within_cpu_time(cpu_us: float) -> float:
    return cpu_us * 1.002 + 5


def _training_step(model, x, target, optimizer):
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _profiled(**kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(16, 32, device="cuda"), torch.randint(0, 8, (16,), device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], **kwargs) as prof:
        for _ in range(2):
            _training_step(model, x, target, optimizer)
    return prof


def test_every_op_has_device_time_within_its_total_time():
    prof = _profiled()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    assert ops
    assert sum(e.device_time_total > 0 for e in ops) > len(ops) // 2
    for event in ops:
        # Whole microseconds: ops that take less (metadata ones) may show 0.
        assert event.device_time_total > 0 or event.cpu_time_total < 2, event.name
        # The device events are taken inside the op's own interval, on the clock the profiler
        # times CPU ops with but converted apart: they agree to ~0.1%, plus the few us an event
        # takes to record.
        assert event.device_time_total <= _within_cpu_time(event.cpu_time_total), (event.name, event.device_time_total)
    averages = prof.key_averages()
    assert sum(a.self_device_time_total for a in averages) > 0
    table = averages.table(sort_by="cuda_time_total", row_limit=5)
    assert "CUDA total" in table and "Self CUDA" in table
    totals = [a.device_time_total for a in sorted(averages, key=lambda a: a.device_time_total, reverse=True)]
    assert totals == sorted(totals, reverse=True)


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
        assert op["ts"] <= kernel["ts"] + 1 and kernel["ts"] + kernel["dur"] <= op["ts"] + _within_cpu_time(op["dur"])
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
    assert 0 < mm.device_time_total <= _within_cpu_time(mm.cpu_time_total)


def test_no_warning_is_printed():
    code = textwrap.dedent(
        """
        import torchdevice, torch
        from torch.profiler import profile, ProfilerActivity
        x = torch.randn(8, 8, device="cuda", requires_grad=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            (x @ x).sum().backward()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=2))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE")}
    env["TORCH_DEVICE_BACKEND"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA" in proc.stdout
    assert "Failed to record CUDA event" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-3000:]
