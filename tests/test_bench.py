"""bench/run.py: what its fresh-process workloads run with."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO_ROOT, describe


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO_ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_overhead_baseline_runs_without_torchdevice_variables():
    """With TORCH_DEVICE_BACKEND set, the .pth hook would activate before the timer: a negative overhead."""
    bench = load_bench()
    environ = {"PATH": "/bin", "TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_DEVICE_COUNT": "2",
               "TORCHDEVICE_REPORT": "r.json", "CUDA_VISIBLE_DEVICES": "0"}
    assert bench.plain_env(environ) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}


def test_import_overhead_sets_torchdevice_variables_inside_the_timed_process(run_python):
    bench = load_bench()
    plain, with_torchdevice = bench.import_timers({"TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_DEVICE_COUNT": "2"})
    assert "import torch;" in plain and "os.environ.update({})" in plain
    code = ("import sys; active_at_start = 'torchdevice' in sys.modules; " + with_torchdevice
            + "; import torchdevice; print(active_at_start, torchdevice.plan.device_count)")
    proc = run_python(["-c", code], env=bench.plain_env())
    assert proc.returncode == 0, describe(proc)
    # Nothing activated at start; the timed import activated, with the variables asked for.
    assert proc.stdout.splitlines()[-1] == "False 2"
