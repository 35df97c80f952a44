"""Which devices are emulated, and on what: decided once per process from the environment.

``TORCH_DEVICE_BACKEND`` picks the *runner*, the device that really executes kernels:
``cpu`` (any machine), ``mps`` (Apple Silicon), ``cuda`` (NVIDIA), or ``auto`` (the best one
present). ``TORCHDEVICE_EMULATE`` picks the device type the program sees (``cuda``, the default,
or ``mps``). PyTorch allows one accelerator type per process ("Cannot have both MPS and cuda"),
so one type is emulated at a time.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import importlib.util
import os
import platform
import re

VALID_BACKENDS = ("auto", "cpu", "mps", "cuda")
VALID_EMULATED = ("cuda", "mps")
DEFAULT_DEVICE_COUNT = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    backend: str  # the value asked for (after resolving "auto")
    runner: str  # where kernels run: "cpu", "mps" or "cuda"
    emulated: tuple[str, ...]  # device types torchdevice provides on that runner
    device_count: int  # emulated devices per emulated type

    @property
    def emulates_cuda(self) -> bool:
        return "cuda" in self.emulated


def requested_backend() -> str:
    value = os.environ.get("TORCH_DEVICE_BACKEND", "auto").strip().lower() or "auto"
    if value not in VALID_BACKENDS:
        raise ValueError(
            f"TORCH_DEVICE_BACKEND={value!r} is not a valid backend; choose one of: {', '.join(VALID_BACKENDS)}"
        )
    return value


def _torch_lib_dir() -> str | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def torch_has_cuda_build() -> bool:
    """True for a CUDA build of torch (the default Linux wheel), decided without importing torch."""
    lib = _torch_lib_dir()
    return bool(lib and glob.glob(os.path.join(lib, "libtorch_cuda.so*")))


def real_cuda_device_count() -> int:
    """Number of NVIDIA GPUs the driver reports (0 without a driver), without importing torch."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def real_mps_available() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


MAX_DEVICE_COUNT = 64


def emulated_device_count() -> int:
    """TORCHDEVICE_DEVICE_COUNT devices, narrowed by CUDA_VISIBLE_DEVICES as CUDA narrows GPUs.

    Without TORCHDEVICE_DEVICE_COUNT, a process started by torchrun gets one device per local
    process (LOCAL_WORLD_SIZE), as a GPU node for ``--nproc_per_node`` would have, so
    ``torch.cuda.set_device(local_rank)`` finds its device; otherwise one device.
    """
    return visible_device_count(physical_device_count())


def physical_device_count() -> int:
    """The devices of the emulated machine, before CUDA_VISIBLE_DEVICES narrows them."""
    raw = os.environ.get("TORCHDEVICE_DEVICE_COUNT", "").strip()
    try:
        physical = int(raw) if raw else _local_world_size() or DEFAULT_DEVICE_COUNT
    except ValueError:
        raise ValueError(f"TORCHDEVICE_DEVICE_COUNT={raw!r} is not an integer") from None
    if not 0 <= physical <= MAX_DEVICE_COUNT:
        raise ValueError(f"TORCHDEVICE_DEVICE_COUNT={physical} is out of range; choose 0 to {MAX_DEVICE_COUNT}")
    return physical


def visible_device_count(physical: int) -> int:
    """How many of ``physical`` devices CUDA_VISIBLE_DEVICES (as it is now) lets the process see."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return physical
    return len(_parse_visible_devices(visible, physical))


def _local_world_size() -> int | None:
    # torchrun's variable, not ours: a value that is no positive integer is ignored rather than
    # failing the launch, and more local processes than the emulator allows get its maximum.
    raw = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if not raw.isdigit() or int(raw) < 1:
        return None
    return min(int(raw), MAX_DEVICE_COUNT)


def _parse_visible_devices(value: str, physical: int) -> list[int]:
    # CUDA's rules: a comma list of ordinals; parsing stops at the first entry that is not a
    # valid, unseen ordinal (so "0,1,-1,2" exposes two devices and "" exposes none).
    seen: list[int] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or not (entry.isdigit()):
            break
        index = int(entry)
        if index >= physical or index in seen:
            break
        seen.append(index)
    return seen


TOTAL_MEMORY_ENV = "TORCHDEVICE_TOTAL_MEMORY"
CUDA_CACHING_ENV = "TORCHDEVICE_CUDA_CACHING"
CAPABILITY_ENV = "TORCHDEVICE_CAPABILITY"
# Binary units: GPUs are sold by binary sizes, and CUDA reports them so. The same grammar as
# parse_memory_size in csrc/runtime/allocator.cpp, which reads the variable again after torch loads
# (a decimal number with at most 9 fraction digits, so both compute the bytes exactly).
_MEMORY_UNITS = {"": 0, "B": 0}
_MEMORY_UNITS.update({prefix + suffix: power for power, prefix in enumerate("KMGT", start=1) for suffix in ("", "B", "IB")})
_MEMORY_SIZE = re.compile(r"([0-9]+)(?:\.([0-9]{1,9}))? *([A-Za-z]*)")
_ASCII_SPACE = " \t\n\r\v\f"  # what C's isspace() strips, not all of Unicode's spaces
_MAX_MEMORY_BYTES = 2**64 - 1  # size_t on the 64-bit platforms torchdevice builds for
_MEMORY_SIZE_FORMS = ("give bytes (25769803776) or a positive number with a unit of B, KB, MB, GB or TB "
                      "(binary: 1 GB = 1024^3 bytes), e.g. 24GB")


def parse_memory_size(text: str) -> int:
    """Bytes of a TORCHDEVICE_TOTAL_MEMORY value: ``25769803776``, ``24GB``, ``24GiB``, ``24G``, ``0.5 TB``."""
    match = _MEMORY_SIZE.fullmatch(text.strip(_ASCII_SPACE))
    unit = match.group(3).upper() if match else ""
    if match is None or unit not in _MEMORY_UNITS:
        raise ValueError(f"{TOTAL_MEMORY_ENV}={text!r} is not a memory size: {_MEMORY_SIZE_FORMS}")
    scale = 1024 ** _MEMORY_UNITS[unit]
    fraction = match.group(2) or ""
    nbytes = int(match.group(1)) * scale + int(fraction or "0") * scale // 10 ** len(fraction)
    if nbytes < 1:
        raise ValueError(f"{TOTAL_MEMORY_ENV}={text!r} is less than 1 byte: {_MEMORY_SIZE_FORMS}")
    if nbytes > _MAX_MEMORY_BYTES:
        raise ValueError(f"{TOTAL_MEMORY_ENV}={text!r} is more than 2^64-1 bytes: {_MEMORY_SIZE_FORMS}")
    return nbytes


def requested_total_memory() -> int | None:
    """The emulated GPU's memory in bytes as TORCHDEVICE_TOTAL_MEMORY asks; None: the host's RAM."""
    text = os.environ.get(TOTAL_MEMORY_ENV)
    return None if text is None else parse_memory_size(text)


def cuda_caching_requested() -> bool:
    """TORCHDEVICE_CUDA_CACHING: exactly as the allocator (csrc/runtime/allocator.cpp) reads it."""
    value = os.environ.get(CUDA_CACHING_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(
            f"{CUDA_CACHING_ENV}={value!r} is not valid: 1 models CUDA's caching allocator for the memory counts, "
            "0 (the default) counts each tensor's bytes"
        )
    return value == "1"


def requested_capability() -> tuple[int, int]:
    """The compute capability TORCHDEVICE_CAPABILITY asks the emulated GPU to report (default 8.0)."""
    raw = os.environ.get(CAPABILITY_ENV, "8.0")
    try:
        major, minor = (int(x) for x in raw.split("."))
    except ValueError:
        raise ValueError(f"{CAPABILITY_ENV}={raw!r} is not of the form MAJOR.MINOR (e.g. 8.0)") from None
    return major, minor


def requested_emulation() -> str | None:
    value = os.environ.get("TORCHDEVICE_EMULATE", "").strip().lower()
    if value and value not in VALID_EMULATED:
        raise ValueError(
            f"TORCHDEVICE_EMULATE={value!r} is not a device type torchdevice emulates; "
            f"choose one of: {', '.join(VALID_EMULATED)}"
        )
    return value or None


def _cpu_plan(backend: str, emulate: str | None) -> Plan:
    emulate = emulate or "cuda"
    # Apple's MPS exposes exactly one device.
    return Plan(backend, "cpu", (emulate,), 1 if emulate == "mps" else emulated_device_count())


def plan() -> Plan:
    backend = requested_backend()
    emulate = requested_emulation()
    if backend == "auto":
        if torch_has_cuda_build() and real_cuda_device_count() > 0:
            if emulate == "mps":
                return Plan("auto", "cuda", ("mps",), 1)
            return Plan("auto", "cuda", (), 0)
        if real_mps_available():
            if emulate == "mps":
                return Plan("auto", "mps", (), 0)
            return Plan("auto", "mps", ("cuda",), emulated_device_count())
        return _cpu_plan("auto", emulate)
    if backend == "cpu":
        return _cpu_plan("cpu", emulate)
    if backend == "mps":
        if not real_mps_available():
            raise RuntimeError(
                "TORCH_DEVICE_BACKEND=mps runs kernels on Apple's MPS, which this machine does not have; "
                "use TORCH_DEVICE_BACKEND=cpu (or auto) here"
            )
        if emulate == "mps":
            # A Mac runs mps code natively.
            return Plan("mps", "mps", (), 0)
        # The mps runner: CUDA-written code on Apple's GPU.
        return Plan("mps", "mps", ("cuda",), emulated_device_count())
    # backend == "cuda": kernels on a real NVIDIA GPU; nothing to emulate for CUDA itself.
    if not (torch_has_cuda_build() and real_cuda_device_count() > 0):
        raise RuntimeError(
            "TORCH_DEVICE_BACKEND=cuda runs kernels on a real NVIDIA GPU, and none is usable here; "
            "use TORCH_DEVICE_BACKEND=cpu (or auto) here"
        )
    if emulate == "mps":
        # The cuda runner: MPS-written code on an NVIDIA GPU (Apple's MPS has one device).
        return Plan("cuda", "cuda", ("mps",), 1)
    return Plan("cuda", "cuda", (), 0)
