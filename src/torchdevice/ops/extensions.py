"""Libraries loaded after activation: their CUDA kernels never run on the emulated device.

At activation the native core gives every op that has a kernel on the device's dispatch key the
emulated route (its CPU kernel on stand-ins of the same memory). A library loaded later
(torchvision, torchaudio, a custom-op extension) registers its own CUDA kernels then, and the
dispatcher would hand them host pointers. So each library load is watched: the device key's
registrations before and after it are compared, and the ops that gained a kernel get the
emulated route too (``_C.adopt_device_kernels``). Loads from Python go through two doors, both
watched: ``ctypes.CDLL`` (``torch.ops.load_library``: torchvision, torchaudio,
``cpp_extension.load(is_python_module=False)``) and the import of an extension module
(``ExtensionFileLoader.create_module``: ``import my_ext``, ``cpp_extension.load``), whose static
initialisers register TORCH_LIBRARY kernels. A library that C++ code dlopens itself is not seen. Kernels that
Python code registers for "cuda" are left alone: they are written in torch ops, which run
emulated. The per-op path is untouched; a load costs two listings of the key (~1 ms).

Some CUDA-only ops of known libraries have no CUDA-key kernel to replace (torchvision's nvJPEG
codec is a device-independent kernel that calls CUDA): they get a host form with the same
semantics, installed when their library appears (``HOST_FORMS``).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import warnings
from typing import Callable

import torch

from torchdevice.core.patch import REGISTRY

OWNER = "ops.extensions"
_TYPE = "cuda"
_KEY = "CUDA"

logger = logging.getLogger("torchdevice")


def _device_key_registrations() -> set[str]:
    return set(torch._C._dispatch_get_registrations_for_dispatch_key(_KEY))


def _adopting(load: Callable) -> Callable:
    """``load`` wrapped: kernels it registers on the device key get the emulated route."""

    def wrapper(*args, **kwargs):
        before = _device_key_registrations()
        try:
            return load(*args, **kwargs)
        finally:
            adopt_new_kernels(before)

    wrapper.__wrapped__ = load
    wrapper.__name__ = getattr(load, "__name__", "load")
    wrapper.__qualname__ = getattr(load, "__qualname__", wrapper.__name__)
    wrapper.__doc__ = getattr(load, "__doc__", None)
    return wrapper


def adopt_new_kernels(before: set[str]) -> int:
    """Gives the emulated route to ops that gained a device-key kernel since ``before``."""
    from torchdevice import _C

    new = sorted(_device_key_registrations() - before)
    adopted = _C.adopt_device_kernels(_TYPE, new) if new else 0
    if adopted:
        logger.debug("torchdevice: %d CUDA kernels registered by a library run emulated: %s", adopted, ", ".join(new))
    install_host_forms()
    return adopted


# ------------------------------------------------------------------ host forms of CUDA-only ops


def _resolved_cuda_device(device: torch.device) -> torch.device:
    device = torch.device(device)
    torch._check(device.type == _TYPE, lambda: f"Expected a cuda device, got {device}")
    return device if device.index is not None else torch.device(_TYPE, torch.cuda.current_device())


def _decode_jpegs_on_host(encoded_images: list[torch.Tensor], mode: int, device: torch.device) -> list[torch.Tensor]:
    # nvJPEG's decode: CPU bitstreams in, images on `device` out (no EXIF orientation, as there).
    target = _resolved_cuda_device(device)
    torch._check(mode in (0, 1, 3), lambda: f"The provided mode is not supported for JPEG decoding on GPU: {mode}")
    images = []
    for data in encoded_images:
        torch._check(data.device.type == "cpu", lambda: "All input tensors must be on CPU")
        torch._check(data.dtype == torch.uint8, lambda: "All input tensors must be of type torch.uint8")
        torch._check(data.dim() == 1 and data.numel() > 0, lambda: "Expected a non empty 1-dimensional tensor")
        images.append(torch.ops.image.decode_jpeg(data, mode, False).to(target))
    return images


def _encode_jpegs_on_host(decoded_images: list[torch.Tensor], quality: int) -> list[torch.Tensor]:
    # nvJPEG's encode: images on one cuda device in, bitstreams on that device out.
    torch._check(len(decoded_images) > 0, lambda: "Empty input tensor list")
    device = decoded_images[0].device
    encoded = []
    for image in decoded_images:
        torch._check(image.dtype == torch.uint8, lambda: "Input tensor dtype should be uint8")
        torch._check(
            image.device == device,
            lambda: "All input tensors must be on the same CUDA device when encoding with nvjpeg",
        )
        torch._check(image.dim() == 3 and image.numel() > 0, lambda: "Input data should be a 3-dimensional tensor")
        torch._check(image.size(0) == 3, lambda: f"The number of channels should be 3, got: {image.size(0)}")
        encoded.append(torch.ops.image.encode_jpeg(image.cpu(), quality).to(device))
    return encoded


# op -> its host form; the op's own kernel (on CompositeExplicitAutograd) calls CUDA libraries.
HOST_FORMS: dict[str, Callable] = {
    "image::decode_jpegs_cuda": _decode_jpegs_on_host,
    "image::encode_jpegs_cuda": _encode_jpegs_on_host,
}
_HOST_FORM_KEY = "CompositeExplicitAutograd"
_installed: dict[str, torch.library.Library] = {}


def _has_host_form_slot(qualname: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, _HOST_FORM_KEY)
    except RuntimeError:  # "operator ... does not exist": its library is not loaded (yet)
        return False


def install_host_forms() -> None:
    """Installs the host form of each op of ``HOST_FORMS`` whose library is loaded."""
    for qualname, fn in HOST_FORMS.items():
        if qualname in _installed or not _has_host_form_slot(qualname):
            continue
        namespace, name = qualname.split("::")
        library = torch.library.Library(namespace, "IMPL")
        with warnings.catch_warnings():
            # "Overriding a previously registered kernel": the library's nvJPEG kernel, on purpose.
            warnings.simplefilter("ignore")
            library.impl(name, fn, _HOST_FORM_KEY)
        _installed[qualname] = library
        REGISTRY.native(torch.ops, qualname, undo=lambda q=qualname: _uninstall(q), owner=OWNER)
        logger.debug("torchdevice: %s runs its host form", qualname)


def _uninstall(qualname: str) -> None:
    library = _installed.pop(qualname, None)
    if library is not None:
        library._destroy()


def apply_patches() -> None:
    REGISTRY.patch(ctypes.CDLL, "__init__", _adopting(ctypes.CDLL.__init__), owner=OWNER)
    loader = importlib.machinery.ExtensionFileLoader
    REGISTRY.patch(loader, "create_module", _adopting(loader.create_module), owner=OWNER)
    # Libraries loaded before activation had their kernels replaced by it; their CUDA-only ops
    # still need their host forms.
    install_host_forms()
