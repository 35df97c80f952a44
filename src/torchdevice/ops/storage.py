"""Storages on the emulated device, and with them checkpoints that hold cuda tensors.

``torch.UntypedStorage(n, device='cuda')`` is built in torch's C++ binding, which on a CPU build
knows no allocator for cuda ("Storage device not recognized: cuda"). Every storage move goes
through that constructor: ``storage.cuda()``, ``storage.to('cuda')`` and so ``torch.load`` of
any checkpoint whose storages are tagged ``cuda:N`` (saved here or on a real GPU), whatever the
``map_location``. The constructor is given a Python ``__new__`` that makes cuda storages the way
tensors get theirs, through the emulated allocator (so their bytes are counted), and leaves
every other device to torch.

``UntypedStorage.resize_`` has the same gap (torch's binding knows CPU and the real CUDA caching
allocator only, "built without USE_CUDA"); FSDP frees and regrows parameter storages with it.
Emulated storages are resized by the native core through the emulated allocator.

``UntypedStorage._share_cuda_`` (what ``torch.multiprocessing`` calls to send a cuda tensor to
another process) hands out a CUDA IPC handle. A CPU build's binding answers "CUDA is not
available" for every storage; here a non-cuda storage gets CUDA's own error, and an emulated one
a clear error: there is no IPC handle for host memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.storage

from torchdevice.core.patch import REGISTRY

OWNER = "ops.storage"
_TYPE = "cuda"

_base_new = torch._C.StorageBase.__new__


def _cuda_storage(nbytes: int, device: torch.device) -> torch.UntypedStorage:
    # A byte tensor's storage is a plain, resizable cuda StorageImpl from the emulated allocator.
    return torch.empty(int(nbytes), dtype=torch.uint8, device=device).untyped_storage()


def _untyped_storage_new(cls: type, *args: Any, **kwargs: Any) -> torch.UntypedStorage:
    device = kwargs.get("device")
    if device is None or kwargs.get("allocator") is not None or cls is not torch.UntypedStorage:
        return _base_new(cls, *args, **kwargs)
    device = torch.device(device)
    if device.type != _TYPE:
        return _base_new(cls, *args, **kwargs)
    if device.index is None:
        device = torch.device(_TYPE, torch.cuda.current_device())
    if not args:
        return _cuda_storage(0, device)
    if len(args) == 1 and isinstance(args[0], int) and not isinstance(args[0], bool):
        return _cuda_storage(args[0], device)
    # A sequence of byte values: built on the host by torch's own parser, then copied over.
    host_kwargs = {k: v for k, v in kwargs.items() if k != "device"}
    host = _base_new(cls, *args, **host_kwargs)
    storage = _cuda_storage(host.nbytes(), device)
    storage.copy_(host)
    return storage


_base_resize = torch.UntypedStorage.resize_


def _untyped_storage_resize(self: torch.UntypedStorage, size: int) -> torch.UntypedStorage:
    if self.device.type != _TYPE:
        return _base_resize(self, size)
    from torchdevice import _C

    # The native call takes a tensor viewing the storage; the storage object itself is resized.
    view = torch.empty(0, dtype=torch.uint8, device=self.device).set_(self)
    _C.resize_storage_bytes(view, int(size))
    return self


def _share_cuda(self: torch.UntypedStorage, *args: Any, **kwargs: Any) -> Any:
    if self.device.type != _TYPE:
        raise RuntimeError("_share_cuda_: only available on CUDA")  # THPStorage_shareCuda's check
    raise RuntimeError(
        "torchdevice: sharing a cuda tensor with another process (CUDA IPC, torch.multiprocessing) needs a real "
        "GPU; the emulated device's memory is host memory. Move the tensor to the CPU before sending it."
    )


def apply_patches() -> None:
    REGISTRY.patch(torch.storage.UntypedStorage, "__new__", staticmethod(_untyped_storage_new), owner=OWNER)
    REGISTRY.patch(torch.UntypedStorage, "resize_", _untyped_storage_resize, owner=OWNER)
    REGISTRY.patch(torch.UntypedStorage, "_share_cuda_", _share_cuda, owner=OWNER)
