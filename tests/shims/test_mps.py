"""Emulated mps (TORCHDEVICE_EMULATE=mps): MPS-written code runs here and gives the CPU result;
torch.mps answers with true figures; MPS's real limits (no float64) are kept."""

import json
import os
import subprocess
import sys
import textwrap

import torch

TRAIN = textwrap.dedent(
    """
    import json, sys
    import torch, torch.nn as nn
    device = sys.argv[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(64, 8).to(device)
    y = torch.randn(64, 1).to(device)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    print(json.dumps([p.detach().cpu().flatten().tolist() for p in model.parameters()]))
    """
)


def _run(code: str, *args: str, emulate: str = "mps") -> str:
    env = {**os.environ, "TORCH_DEVICE_BACKEND": "cpu", "TORCHDEVICE_EMULATE": emulate}
    out = subprocess.run([sys.executable, "-c", "import torchdevice\n" + code, *args],
                         capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_mps_training_equals_cpu():
    on_mps = json.loads(_run(TRAIN, "mps"))
    on_cpu = json.loads(_run(TRAIN, "cpu"))
    assert on_mps == on_cpu  # exact: same kernels, same seeds


def test_torch_mps_api_reports_true_figures():
    code = textwrap.dedent(
        """
        import torch
        assert torch.backends.mps.is_available() and torch.backends.mps.is_built()
        assert torch.mps.device_count() == 1 and not torch.cuda.is_available()
        before = torch.mps.current_allocated_memory()
        x = torch.empty(1024, device="mps")
        assert torch.mps.current_allocated_memory() == before + 4096
        assert torch.mps.driver_allocated_memory() >= 4096
        assert torch.mps.recommended_max_memory() > 0
        torch.mps.synchronize(); torch.mps.empty_cache()
        torch.mps.manual_seed(3); a = torch.rand(4, device="mps")
        torch.mps.manual_seed(3); b = torch.rand(4, device="mps")
        assert torch.equal(a.cpu(), b.cpu())
        state = torch.mps.get_rng_state(); torch.mps.set_rng_state(state)
        start, end = torch.mps.Event(enable_timing=True), torch.mps.Event(enable_timing=True)
        start.record(); end.record(); end.synchronize()
        assert start.elapsed_time(end) >= 0
        with torch.mps.profiler.profile():
            pass
        torch.mps.set_per_process_memory_fraction(0.5)
        assert torch.accelerator.current_accelerator() == torch.device("mps")
        print("ok", x.device)
        """
    )
    assert _run(code) == "ok mps:0"


def test_float64_is_refused_as_on_a_mac():
    code = textwrap.dedent(
        """
        import torch
        msg = "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64"
        for make in (lambda: torch.zeros(2, dtype=torch.float64, device="mps"),
                     lambda: torch.ones(2).to("mps", torch.float64),
                     lambda: torch.ones(2, device="mps").double()):
            try:
                make()
            except TypeError as e:
                assert msg in str(e), e
            else:
                raise AssertionError("float64 on mps did not raise")
        print("ok")
        """
    )
    assert _run(code) == "ok"


def test_mps_writes_nothing_to_cuda():
    assert _run("import torch; print(torch.cuda.is_available(), torch.ones(1, device='mps').device)") == "False mps:0"


def test_mps_is_the_only_accelerator_as_on_a_mac():
    # One accelerator type per process: with mps emulated, CUDA is off for ATen (the native core
    # switches the CUDA hooks off; a CUDA build's real hooks would say "Cannot have both MPS and
    # cuda") and for torch.cuda, on a CPU build and on the CUDA wheel alike.
    code = textwrap.dedent(
        """
        import torch
        x = torch.ones(3, device="mps", requires_grad=True)
        (x * 2).sum().backward()  # autograd asks for the accelerator
        print(torch.accelerator.current_accelerator(), torch.accelerator.device_count(), x.grad.device,
              torch.cuda.is_available(), torch.cuda.device_count(), torch._C._get_accelerator())
        """
    )
    assert _run(code) == "mps 1 mps:0 False 0 mps"


def test_invalid_emulation_is_a_clear_error():
    env = {**os.environ, "TORCHDEVICE_EMULATE": "xpu"}
    out = subprocess.run([sys.executable, "-c", "import torchdevice"], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "TORCHDEVICE_EMULATE='xpu' is not a device type torchdevice emulates; choose one of: cuda, mps" in out.stderr


def test_current_process_emulates_cuda_by_default():
    assert torch.cuda.is_available()


def test_mps_streams_and_events_of_newer_torch():
    # torch >= 2.15: Event.record compares torch.mps.current_stream() with the default stream;
    # torch.backends.mps names the device. (Older releases have neither: the test checks what exists.)
    code = textwrap.dedent(
        """
        import torch
        name = torch.backends.mps.get_name() if hasattr(torch._C, "_mps_get_name") or hasattr(torch.mps, "current_stream") else "-"
        assert isinstance(name, str) and name
        start, end = torch.mps.Event(enable_timing=True), torch.mps.Event(enable_timing=True)
        start.record(); torch.ones(64, device="mps").sum(); end.record(); end.synchronize()
        assert start.elapsed_time(end) >= 0
        if hasattr(torch.mps, "current_stream"):
            assert torch.mps.current_stream() == torch.mps.default_stream()
            assert torch.mps.current_stream().stream_id == 0
            with torch.mps.stream(torch.mps.Stream(stream_id=0)):
                torch.mps.current_stream().synchronize()
            assert torch.backends.mps.get_core_count() >= 1
        print("ok")
        """
    )
    assert _run(code) == "ok"
