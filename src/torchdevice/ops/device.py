"""Device-level ``torch.cuda`` bindings and capability queries for the emulated GPU.

torch's own Python in ``torch/cuda`` calls a layer of ``torch._C._cuda_*`` bindings. A CPU build
of torch lacks them, and a CUDA build without a driver has them failing. Providing that layer
(instead of replacing each public function) keeps torch's own argument handling, caching and
formatting, and repairs the references other modules took at import
(``from torch.cuda import current_device`` in ``torch.cuda.random``, for instance).

Capability answers follow docs/capability-honesty.md: say yes only where the emulated device
really does the work (bf16 kernels exist), no where a library would take a GPU-only fast path
that cannot run here (cuDNN, a CUDA toolkit version).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.cuda

from torchdevice import _C
from torchdevice.core.device import requested_capability
from torchdevice.core.patch import REGISTRY
from torchdevice.shims.cuda import CLOCK_RATE_KHZ

OWNER = "ops.device"
_TYPE = "cuda"


def arch_flags() -> str:
    """What a CUDA build compiled kernels for: here, the emulated capability (``sm_80`` by default)."""
    major, minor = requested_capability()
    return f"sm_{major}{minor}"


def apply_patches() -> None:
    C = torch._C
    patch = REGISTRY.patch_function

    # _cuda_getDeviceCount's presence is what torch.cuda._is_compiled() tests: with it, early
    # references to torch.cuda.is_available/device_count answer as on a CUDA build.
    @patch(C, "_cuda_getDeviceCount", owner=OWNER)
    def _cuda_getDeviceCount() -> int:
        return _C.device_count(_TYPE)

    @patch(C, "_cuda_getDevice", owner=OWNER)
    def _cuda_getDevice() -> int:
        torch.cuda._lazy_init()
        return _C.current_device(_TYPE)

    @patch(C, "_cuda_setDevice", owner=OWNER)
    def _cuda_setDevice(device: int) -> None:
        if device < 0:  # CUDA's binding ignores negative indices
            return
        torch.cuda._lazy_init()
        _C.set_device(_TYPE, int(device))

    @patch(C, "_cuda_exchangeDevice", owner=OWNER)
    def _cuda_exchangeDevice(device: int) -> int:
        return torch.cuda._exchange_device(device)

    @patch(C, "_cuda_maybeExchangeDevice", owner=OWNER)
    def _cuda_maybeExchangeDevice(device: int) -> int:
        return torch.cuda._maybe_exchange_device(device)

    @patch(C, "_cuda_getArchFlags", owner=OWNER)
    def _cuda_getArchFlags() -> str:
        return arch_flags()

    @patch(C, "_cuda_canDeviceAccessPeer", owner=OWNER)
    def _cuda_canDeviceAccessPeer(device: int, peer_device: int) -> bool:
        # All emulated devices share host memory: every pair can address each other, as
        # NVLink-connected GPUs can. Bad indices raise as cudaDeviceCanAccessPeer does.
        _C.check_device(_TYPE, int(device))
        _C.check_device(_TYPE, int(peer_device))
        return device != peer_device

    # The runner's queue (cpu runner: synchronous, nothing to wait for).
    @patch(C, "_cuda_synchronize", owner=OWNER)
    def _cuda_synchronize() -> None:
        index = _C.current_device(_TYPE)
        _C.check_device(_TYPE, index)
        _C.synchronize(_TYPE, index)

    @patch(C, "_cuda_sleep", owner=OWNER)
    def _cuda_sleep(cycles: int) -> None:
        # A spin kernel of `cycles` clock cycles on the current stream: the stream stays busy
        # that long (query() False, synchronize() waits), at the clock rate the properties report.
        index = _C.current_device(_TYPE)
        stream = torch._C._accelerator_getStream(index)
        nanoseconds = int(cycles) * 1_000_000 // CLOCK_RATE_KHZ
        _C.keep_stream_busy(_TYPE, index, int(stream.stream_id), nanoseconds)

    # torch.cuda's module-level aliases were bound to fallbacks at import; the shims put the
    # emulated ones in place, and these keep torch.cuda.is_bf16_supported honest without
    # the tensor probe (bf16 kernels exist on the host).
    @patch(torch.cuda, "is_bf16_supported", owner=OWNER)
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        if not torch.cuda.is_available():
            return False
        # Real CUDA: native bf16 from sm_80; below that only "emulated" bf16, which the host
        # kernels provide as well, so the answer follows the same rule.
        if torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8:
            return True
        return bool(including_emulation)

    @patch(torch.cuda, "get_arch_list", owner=OWNER)
    def get_arch_list() -> list[str]:
        if not torch.cuda.is_available():
            return []
        return arch_flags().split()

    _answer_as_without_cuda_libraries()


def _answer_as_without_cuda_libraries() -> None:
    """No CUDA toolkit and no cuDNN behind the emulated device, whatever torch build runs it.

    A CUDA build of torch (the default Linux wheel) names its CUDA version in
    ``torch.version.cuda`` and ships cuDNN (``torch.backends.cudnn.is_available()``). Neither runs
    the emulated device's kernels: libraries that see a CUDA version load CUDA-compiled
    extensions (flash-attn, bitsandbytes), and cuDNN's answers would pick cuDNN-only paths. So
    the emulated device answers as on the CPU build: ``torch.version.cuda`` is None, cuDNN is
    not available and has no version (its flags stay settable). The native hooks already tell
    ATen the same (``compiledWithCuDNN()`` false). A CPU build needs nothing here.
    """
    if torch.version.cuda is not None:
        REGISTRY.patch(torch.version, "cuda", None, owner=OWNER)
    if getattr(torch._C, "_has_cudnn", False):
        import torch.backends.cudnn as cudnn

        REGISTRY.patch(torch._C, "_has_cudnn", False, owner=OWNER)

        def _init() -> bool:
            # torch.backends.cudnn.version() asks this; False means "no cuDNN" (version None).
            return False

        # torch.backends.cudnn is a PropModule over the module whose globals version() reads.
        REGISTRY.patch(getattr(cudnn, "m", cudnn), "_init", _init, owner=OWNER)


def device_index(device: Any) -> int:
    """torch.cuda's device-argument parsing, with None/-1 meaning the current device."""
    index = torch.cuda._utils._get_device_index(device, optional=True, allow_cpu=False)
    # Only -1: CUDA takes any other negative index as the (invalid) device it names.
    return _C.current_device(_TYPE) if index is None or index == -1 else index
