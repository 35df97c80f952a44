"""Loading torchdevice's native core, before torch where possible.

PyTorch creates its CUDA hooks object once, the first time anything asks for it. If the
core library is loaded (and its hooks registered) before ``import torch``, PyTorch picks our
hooks from its own registry. If torch was imported first, the core installs them another way
(see csrc/runtime/internals.h); both routes are tested.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

CORE_LIBRARY = "libtorchdevice_core.so"
_preloaded = False


def core_library_path() -> str:
    spec = importlib.util.find_spec("torchdevice._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "torchdevice's native extension (torchdevice._C) is not built; "
            "install with `pip install --no-build-isolation .` next to the torch it should use"
        )
    return os.path.join(os.path.dirname(spec.origin), CORE_LIBRARY)


def preload(device_type: str = "cuda") -> bool:
    """Register the hooks of `device_type` ("cuda" or "mps") before torch creates its own.
    Returns False if torch came first."""
    global _preloaded
    if _preloaded:
        return True
    if "torch" in sys.modules:
        return False
    lib = ctypes.CDLL(core_library_path(), mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL)
    register = getattr(lib, f"torchdevice_register_{device_type}_hooks")
    register.restype = ctypes.c_bool
    register()
    _preloaded = True
    return True
