"""The legacy typed tensor API for cuda: ``torch.cuda.FloatTensor(4)``, ``set_default_tensor_type``.

Old CUDA code builds tensors with ``torch.cuda.FloatTensor(n)`` / ``torch.cuda.LongTensor(data)``
and makes cuda the default with ``torch.set_default_tensor_type(torch.cuda.FloatTensor)``. torch
has these types on every build, but a CPU build refuses to use them ("type torch.cuda.FloatTensor
not available. Torch not compiled with CUDA enabled."). On such a build:

* the types' constructors are the native core's (csrc/python/legacy_types.cpp): torch's own
  legacy constructor for the CUDA dispatch key, so sizes, data, storages and ``device=`` behave
  as on a GPU;
* ``torch.set_default_tensor_type`` given a cuda type sets the matching dtype and makes cuda the
  default device (what the CUDA build's default backend does for factory functions); given any
  other type it clears that default again.

A CUDA build of torch does both natively for the emulated device, and is left alone.
Conversions (``x.type(torch.cuda.HalfTensor)``, ``isinstance(x, torch.cuda.FloatTensor)``) work
on both builds without help.
"""

from __future__ import annotations

from typing import Any

import torch

from torchdevice.core.device import torch_has_cuda_build
from torchdevice.core.patch import REGISTRY

OWNER = "ops.legacy_types"
_TYPE = "cuda"

_CUDA_TENSOR_TYPES = ("BFloat16Tensor", "BoolTensor", "ByteTensor", "CharTensor", "DoubleTensor", "FloatTensor",
                      "HalfTensor", "IntTensor", "LongTensor", "ShortTensor")

# True while a cuda type set with set_default_tensor_type made cuda the default device.
_default_device_set = False


def _cuda_tensor_types() -> list[type]:
    return [getattr(torch.cuda, name) for name in _CUDA_TENSOR_TYPES if hasattr(torch.cuda, name)]


def _set_default_tensor_type(t: Any) -> None:
    global _default_device_set
    if isinstance(t, str):
        t = torch._utils._import_dotted_name(t)
    if any(t is cuda_type for cuda_type in _cuda_tensor_types()):
        _original_set_default_tensor_type(getattr(torch, t.__name__))  # the dtype (and the checks)
        torch.set_default_device(_TYPE)
        _default_device_set = True
        return
    if _default_device_set:
        torch.set_default_device(None)
        _default_device_set = False
    _original_set_default_tensor_type(t)


_original_set_default_tensor_type = torch.set_default_tensor_type


def apply_patches() -> None:
    if torch_has_cuda_build():
        return
    from torchdevice import _C

    for tensor_type in _cuda_tensor_types():
        _C.install_legacy_constructor(tensor_type, tensor_type.dtype)
    REGISTRY.native(torch.cuda, "*Tensor constructors", undo=_C.restore_legacy_constructors, owner=OWNER)
    REGISTRY.patch(torch, "set_default_tensor_type", _set_default_tensor_type, owner=OWNER)
