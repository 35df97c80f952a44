"""Backend and device-count selection (torchdevice.core.device), from the environment."""

from __future__ import annotations

import json

import pytest

from torchdevice.core import device
from tests.conftest import TORCHDEVICE_ENV, describe


@pytest.fixture(autouse=True)
def _no_torchdevice_env(monkeypatch):
    for name in TORCHDEVICE_ENV:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------- TORCH_DEVICE_BACKEND


@pytest.mark.parametrize(("value", "expected"), [("cpu", "cpu"), (" CPU ", "cpu"), ("auto", "auto"), ("", "auto")])
def test_requested_backend(monkeypatch, value, expected):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", value)
    assert device.requested_backend() == expected


def test_requested_backend_defaults_to_auto():
    assert device.requested_backend() == "auto"


def test_invalid_backend_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"TORCH_DEVICE_BACKEND='tpu' is not a valid backend; choose one of: auto, cpu, mps, cuda"):
        device.requested_backend()


def test_invalid_backend_fails_import(run_code):
    proc = run_code("import torchdevice", env={"TORCH_DEVICE_BACKEND": "tpu"})
    assert proc.returncode == 1
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "ValueError: TORCH_DEVICE_BACKEND='tpu' is not a valid backend; choose one of: auto, cpu, mps, cuda"
    )


def test_plan_cpu_backend(monkeypatch):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", "cpu")
    assert device.plan() == device.Plan("cpu", "cpu", ("cuda",), 1)


def test_plan_auto_without_gpu_emulates_cuda_on_cpu(monkeypatch):
    monkeypatch.setattr(device, "real_cuda_device_count", lambda: 0)
    monkeypatch.setattr(device, "real_mps_available", lambda: False)
    plan = device.plan()
    assert plan == device.Plan("auto", "cpu", ("cuda",), 1)
    assert plan.emulates_cuda


def test_plan_auto_with_a_real_gpu_emulates_nothing(monkeypatch):
    monkeypatch.setattr(device, "torch_has_cuda_build", lambda: True)
    monkeypatch.setattr(device, "real_cuda_device_count", lambda: 2)
    plan = device.plan()
    assert plan == device.Plan("auto", "cuda", (), 0)
    assert not plan.emulates_cuda


@pytest.mark.parametrize("backend", ["auto", "cuda"])
def test_plan_mps_code_on_a_real_gpu_uses_the_cuda_runner(monkeypatch, backend):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", backend)
    monkeypatch.setenv("TORCHDEVICE_EMULATE", "mps")
    monkeypatch.setattr(device, "torch_has_cuda_build", lambda: True)
    monkeypatch.setattr(device, "real_cuda_device_count", lambda: 2)
    assert device.plan() == device.Plan(backend, "cuda", ("mps",), 1)


@pytest.mark.parametrize("backend", ["auto", "mps"])
def test_plan_cuda_code_on_apple_silicon_uses_the_mps_runner(monkeypatch, backend):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", backend)
    monkeypatch.delenv("TORCHDEVICE_EMULATE", raising=False)
    monkeypatch.setattr(device, "real_cuda_device_count", lambda: 0)
    monkeypatch.setattr(device, "real_mps_available", lambda: True)
    assert device.plan() == device.Plan(backend, "mps", ("cuda",), 1)


@pytest.mark.parametrize("backend", ["auto", "mps"])
def test_plan_mps_code_on_apple_silicon_emulates_nothing(monkeypatch, backend):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", backend)
    monkeypatch.setenv("TORCHDEVICE_EMULATE", "mps")
    monkeypatch.setattr(device, "real_cuda_device_count", lambda: 0)
    monkeypatch.setattr(device, "real_mps_available", lambda: True)
    assert device.plan() == device.Plan(backend, "mps", (), 0)


def test_plan_mps_without_apple_silicon(monkeypatch):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", "mps")
    monkeypatch.setattr(device, "real_mps_available", lambda: False)
    with pytest.raises(RuntimeError, match="TORCH_DEVICE_BACKEND=mps runs kernels on Apple's MPS"):
        device.plan()


def test_plan_cuda_without_gpu(monkeypatch):
    monkeypatch.setenv("TORCH_DEVICE_BACKEND", "cuda")
    monkeypatch.setattr(device, "real_cuda_device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="TORCH_DEVICE_BACKEND=cuda runs kernels on a real NVIDIA GPU"):
        device.plan()


def test_no_driver_means_no_real_gpu():
    # This machine has no NVIDIA driver; the probe must answer 0, not raise.
    assert device.real_cuda_device_count() == 0


# -------------------------------------------- TORCHDEVICE_DEVICE_COUNT and CUDA_VISIBLE_DEVICES


@pytest.mark.parametrize(
    ("count", "visible", "expected"),
    [
        (None, None, 1),
        ("2", None, 2),
        ("0", None, 0),
        (" 3 ", None, 3),
        ("2", "1", 1),
        ("2", "", 0),
        ("2", "0,5", 1),  # parsing stops at the first ordinal that does not exist
        ("2", "1,0", 2),
        ("4", "0,1,-1,2", 2),  # ... or is not a non-negative integer
        ("2", "0,0", 1),  # ... or repeats
        ("2", " 1 , 0 ", 2),
        ("2", "GPU-8e6bd1f3", 0),  # UUIDs name real GPUs; an emulated device has none
        (None, "0", 1),
        (None, "1", 0),
    ],
)
def test_emulated_device_count(monkeypatch, count, visible, expected):
    if count is not None:
        monkeypatch.setenv("TORCHDEVICE_DEVICE_COUNT", count)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert device.emulated_device_count() == expected


@pytest.mark.parametrize(("value", "message"), [("two", "is not an integer"), ("65", "out of range"), ("-1", "out of range")])
def test_bad_device_count(monkeypatch, value, message):
    monkeypatch.setenv("TORCHDEVICE_DEVICE_COUNT", value)
    with pytest.raises(ValueError, match=f"TORCHDEVICE_DEVICE_COUNT=.*{message}"):
        device.emulated_device_count()


DEVICE_REPORT = """
import json, torch, torchdevice
print(json.dumps({"count": torch.cuda.device_count(), "available": torch.cuda.is_available(),
                  "plan_count": torchdevice.plan.device_count}))
"""


@pytest.mark.parametrize(
    ("env", "count"),
    [
        ({"TORCHDEVICE_DEVICE_COUNT": "2"}, 2),
        ({"CUDA_VISIBLE_DEVICES": "1", "TORCHDEVICE_DEVICE_COUNT": "2"}, 1),
        ({"CUDA_VISIBLE_DEVICES": "1"}, 0),
        ({"CUDA_VISIBLE_DEVICES": ""}, 0),
        ({"CUDA_VISIBLE_DEVICES": "0,5", "TORCHDEVICE_DEVICE_COUNT": "2"}, 1),
    ],
    ids=["count-2", "visible-1-of-2", "visible-1-of-1", "visible-none", "visible-0,5-of-2"],
)
def test_torch_cuda_device_count_follows_environment(run_code, env, count):
    proc = run_code("import torchdevice\n" + DEVICE_REPORT, env=env)
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout)
    assert report == {"count": count, "available": count > 0, "plan_count": count}


def test_no_visible_device_fails_like_cuda(run_code):
    proc = run_code(
        """
        import torchdevice, torch
        try:
            torch.ones(1, device="cuda")
        except RuntimeError as exc:
            print(type(exc).__name__, exc)
        """,
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == "RuntimeError No CUDA GPUs are available"


# ------------------------------------------ TORCHDEVICE_TOTAL_MEMORY, _CUDA_CACHING, _CAPABILITY


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("25769803776", 25769803776),
        ("24GB", 24 << 30),
        ("24GiB", 24 << 30),
        ("24g", 24 << 30),
        ("512 MB", 512 << 20),
        (" 0.5 TB ", 1 << 39),
        ("1.5", 1),  # bytes are whole: the fraction of one is dropped
        ("0.001KB", 1),
        ("18446744073709551615", 2**64 - 1),
        ("0000000000000000000000001", 1),
    ],
)
def test_memory_size(text, nbytes):
    assert device.parse_memory_size(text) == nbytes


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("banana", "is not a memory size"),
        ("inf", "is not a memory size"),
        ("nan", "is not a memory size"),
        ("1e30", "is not a memory size"),
        ("-1", "is not a memory size"),
        ("24 PB", "is not a memory size"),
        ("1.", "is not a memory size"),
        ("1.1234567890", "is not a memory size"),  # at most 9 fraction digits: exact in integers
        ("BB", "is not a memory size"),
        ("0", "is less than 1 byte"),
        ("0.1", "is less than 1 byte"),
        ("18446744073709551616", "is more than 2^64-1 bytes"),
        ("16777216TB", "is more than 2^64-1 bytes"),
    ],
)
def test_bad_memory_size_names_the_value_and_the_valid_forms(text, problem):
    with pytest.raises(ValueError) as info:
        device.parse_memory_size(text)
    assert str(info.value) == (
        f"TORCHDEVICE_TOTAL_MEMORY={text!r} {problem}: give bytes (25769803776) or a positive number with a unit "
        "of B, KB, MB, GB or TB (binary: 1 GB = 1024^3 bytes), e.g. 24GB"
    )


# Loads the extension without the torchdevice package, whose check would refuse a bad value
# first: the native core's own parser reads the variable when the allocators are made.
NATIVE_PARSE = """
import importlib.machinery, importlib.util, os, sys
import torch
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("torchdevice._C", path, loader=importlib.machinery.ExtensionFileLoader("torchdevice._C", path))
C = importlib.util.module_from_spec(spec)
spec.loader.exec_module(C)
try:
    print(C.total_memory("cuda"))
except RuntimeError as exc:
    print(str(exc).splitlines()[0])
"""


@pytest.mark.parametrize("text", ["banana", "inf", "1e30", "0.1", "18446744073709551616", "0.5 KiB", "18446744073709551615"])
def test_native_core_parses_memory_sizes_as_python_does(run_python, text):
    import importlib.util

    extension = importlib.util.find_spec("torchdevice._C").origin
    proc = run_python(["-c", NATIVE_PARSE, extension], env={"TORCHDEVICE_TOTAL_MEMORY": text})
    assert proc.returncode == 0, describe(proc)
    try:
        expected = str(device.parse_memory_size(text))
    except ValueError as exc:
        expected = str(exc)
    assert proc.stdout.strip() == expected


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("", False), ("0", False), ("1", True)])
def test_cuda_caching_requested(monkeypatch, value, expected):
    if value is not None:
        monkeypatch.setenv("TORCHDEVICE_CUDA_CACHING", value)
    assert device.cuda_caching_requested() is expected


@pytest.mark.parametrize("value", ["2", "yes", " 1"])  # exactly as the allocator reads it
def test_bad_cuda_caching(monkeypatch, value):
    monkeypatch.setenv("TORCHDEVICE_CUDA_CACHING", value)
    with pytest.raises(ValueError, match=f"TORCHDEVICE_CUDA_CACHING={value!r} is not valid: 1 models"):
        device.cuda_caching_requested()


def test_bad_capability(monkeypatch):
    monkeypatch.setenv("TORCHDEVICE_CAPABILITY", "eight")
    with pytest.raises(ValueError, match=r"TORCHDEVICE_CAPABILITY='eight' is not of the form MAJOR.MINOR"):
        device.requested_capability()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TORCHDEVICE_TOTAL_MEMORY", "banana", "TORCHDEVICE_TOTAL_MEMORY='banana' is not a memory size"),
        ("TORCHDEVICE_CUDA_CACHING", "2", "TORCHDEVICE_CUDA_CACHING='2' is not valid"),
        ("TORCHDEVICE_LOG_LEVEL", "loud", "TORCHDEVICE_LOG_LEVEL='LOUD' is not valid"),
        ("TORCHDEVICE_CAPABILITY", "eight", "TORCHDEVICE_CAPABILITY='eight' is not of the form"),
    ],
)
def test_explicit_import_with_a_bad_variable_raises_value_error_before_torch(run_code, name, value, message):
    proc = run_code(
        """
        import sys
        try:
            import torchdevice
        except ValueError as exc:
            print(type(exc).__name__, "torch" in sys.modules, exc)
        """,
        env={name: value},
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.startswith(f"ValueError False {message}"), describe(proc)
