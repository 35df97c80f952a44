"""``torch.cuda.comm`` and ``nn.DataParallel`` over the emulated devices.

DataParallel's scatter, replicate and gather, and ``torch.cuda.comm``'s broadcast, scatter and
gather (with their coalesced and ``out=`` forms), stand on seven bindings in ``torch._C`` (torch's
python_comm.cpp over comm.cpp). A CPU build has none of them; a CUDA build's take the real CUDA
device guard and NCCL, which fail without a driver. Here they are comm.cpp's algorithm over the
emulated devices' own copies, with comm.cpp's argument checks and messages. ``torch.cuda.nccl``
answers "not available" for emulated tensors, so ``comm.reduce_add`` (DataParallel's gradient
sum) takes torch's own copy-and-add path: what a CUDA build without NCCL runs on GPUs.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Sequence

import torch
from torch._utils import (_flatten_dense_tensors, _flatten_sparse_tensors, _reorder_tensors_as, _take_tensors,
                          _unflatten_dense_tensors, _unflatten_sparse_tensors)

from torchdevice.core.patch import REGISTRY

OWNER = "ops.comm"
_TYPE = "cuda"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)  # TORCH_CHECK's type


def _sizes(t: torch.Tensor) -> str:
    return str(list(t.shape))  # how c10 prints an IntArrayRef: [2, 3]


def _wrap_dim(dim: int, t: torch.Tensor) -> int:
    rank = max(t.dim(), 1)
    if not -rank <= dim < rank:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})")
    return dim % rank


def _device(index: int) -> torch.device:
    return torch.device(_TYPE, index)


def _stream_guard(streams: Sequence[Any] | None, i: int, device_index: int):
    stream = streams[i] if streams is not None and i < len(streams) else None
    if stream is None:
        return contextlib.nullcontext()
    _check(stream.device_index == device_index,
           f"Expected the device associated with the stream at index {i} (was {stream.device_index}) "
           f"to match the device supplied at that index (expected {device_index})")
    return torch.cuda.stream(stream)


def _broadcast_out_impl(tensor: torch.Tensor, out: list[torch.Tensor]) -> list[torch.Tensor]:
    for target in out:
        target.copy_(tensor, non_blocking=True)
    return out


def broadcast_out(tensor: torch.Tensor, out: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = list(out)
    for i, target in enumerate(out):
        _check(target.is_cuda,
               f"Expected all output tensors to be CUDA tensors, but output tensor at index {i} has device '{target.device}'")
        _check(target.shape == tensor.shape,
               f"Expected all output tensors to have same shape as the source tensor {_sizes(tensor)}, "
               f"but output tensor at index {i} has shape {_sizes(target)}")
    return _broadcast_out_impl(tensor, out)


def broadcast(tensor: torch.Tensor, devices: Sequence[int]) -> list[torch.Tensor]:
    # The source itself stands for its own device; every other device gets a fresh copy.
    source = tensor.get_device()
    copies = []
    for device in devices:
        _check(device >= 0, f"Expected non-negative device index, but got {device}")
        if device != source:
            copies.append(torch.empty(tensor.shape, dtype=tensor.dtype, layout=tensor.layout, device=_device(device)))
    _broadcast_out_impl(tensor, copies)
    remaining = iter(copies)
    return [tensor if device == source else next(remaining) for device in devices]


def broadcast_coalesced(tensors: Sequence[torch.Tensor], devices: Sequence[int], buffer_size: int) -> list[list[torch.Tensor]]:
    tensors, devices = list(tensors), list(devices)
    _check(all(t.get_device() == devices[0] for t in tensors), f"All tensors must be on devices[0]: {devices[0]}")
    outputs: list[list[torch.Tensor]] = [tensors] + [[] for _ in devices[1:]]
    types = set()
    with torch.cuda.device(devices[0]):
        for chunk in _take_tensors(tensors, buffer_size):
            types.add(chunk[0].type())
            if chunk[0].is_sparse:
                indices, values = _flatten_sparse_tensors(chunk)
                copies = list(zip(broadcast(indices, devices), broadcast(values, devices)))
                unflatten = _unflatten_sparse_tensors
            else:
                copies = broadcast(_flatten_dense_tensors(chunk), devices)
                unflatten = _unflatten_dense_tensors
            for i in range(1, len(devices)):
                with torch.cuda.device(devices[i]):
                    # .data: each copy gets its own version counter (comm.cpp's NOTE [ Version
                    # Counter in comm.*_coalesced ]); the inputs on devices[0] are returned as-is.
                    outputs[i].extend(t.data for t in unflatten(copies[i], chunk))
    if len(types) > 1:
        outputs = [outputs[0]] + [list(_reorder_tensors_as(o, tensors)) for o in outputs[1:]]
    return outputs


def scatter(tensor: torch.Tensor, devices: Sequence[int], chunk_sizes: Sequence[int] | None = None, dim: int = 0,
            streams: Sequence[Any] | None = None) -> list[torch.Tensor]:
    devices = list(devices)
    _check(bool(devices), "Expected at least one device to scatter to")
    if chunk_sizes is not None:
        _check(len(chunk_sizes) == len(devices),
               f"Expected devices and chunk_sizes to be of same length, but got len(devices) = {len(devices)} "
               f"and len(chunk_sizes) = {len(chunk_sizes)}")
    dim = _wrap_dim(dim, tensor)
    chunks = list(tensor.split_with_sizes(list(chunk_sizes), dim) if chunk_sizes is not None
                  else tensor.chunk(len(devices), dim))
    for i, chunk in enumerate(chunks):
        device = devices[i]
        if device == tensor.get_device():
            continue  # a chunk on its own device stays a view of the input
        with _stream_guard(streams, i, device):
            _check(device >= 0, f"Expected non-negative device index, but got {device}")
            chunks[i] = chunk.to(_device(device), non_blocking=True, copy=False, memory_format=torch.preserve_format)
    return chunks


def scatter_out(tensor: torch.Tensor, out: Sequence[torch.Tensor], dim: int = 0,
                streams: Sequence[Any] | None = None) -> list[torch.Tensor]:
    out = list(out)
    _check(bool(out), "Expected at least one output tensor to scatter to")
    dim = _wrap_dim(dim, tensor)
    total, chunk_sizes = 0, []
    for i, target in enumerate(out):
        _check(target.is_cuda,
               f"Expected all output tensors to be CUDA tensors, but output tensor at index {i} has device '{target.device}'")
        sizes = list(target.shape)
        same_rank = len(sizes) == tensor.dim()
        if same_rank:
            total += sizes[dim]
            chunk_sizes.append(sizes[dim])
            sizes[dim] = tensor.size(dim)
        _check(same_rank and sizes == list(tensor.shape),
               f"Output tensor at index {i} has incorrect shape: {_sizes(target)}. Expected same shape except for "
               f"scatter dim {dim} as the source tensor: {_sizes(tensor)}")
    _check(total == tensor.size(dim),
           f"Total size for output tensors along scatter dim {dim} does not match the source tensor size at dim "
           f"{dim}. Expected {tensor.size(dim)}, but got total size {total}")
    for i, chunk in enumerate(tensor.split_with_sizes(chunk_sizes, dim)):
        with _stream_guard(streams, i, out[i].get_device()):
            out[i].copy_(chunk, non_blocking=True)
    return out


def _check_gather_inputs(tensors: Sequence[torch.Tensor], dim: int) -> tuple[list[int], int]:
    _check(bool(tensors), "Expected at least one tensor to gather from")
    dim = _wrap_dim(dim, tensors[0])
    expected = list(tensors[0].shape)
    total = 0
    for i, t in enumerate(tensors):
        _check(t.is_cuda, f"Expected all input tensors to be CUDA tensors, but tensor at index {i} has device '{t.device}'")
        _check(t.dim() == len(expected),
               f"Expected all input tensors to have the same number of dimensions, but tensor at index {i} has "
               f"{t.dim()} dimensions, (expected {len(expected)})")
        expected[dim] = t.size(dim)
        _check(list(t.shape) == expected, f"Input tensor at index {i} has invalid shape {_sizes(t)}, but expected {expected}")
        total += t.size(dim)
    expected[dim] = total
    return expected, dim


def _gather_out_impl(tensors: Sequence[torch.Tensor], out: torch.Tensor, dim: int) -> torch.Tensor:
    for part, t in zip(out.split_with_sizes([t.size(dim) for t in tensors], dim), tensors):
        part.copy_(t, non_blocking=out.is_cuda)
    return out


def _suggested_memory_format(t: torch.Tensor) -> torch.memory_format:
    # Tensor::suggest_memory_format for the layouts gather sees: channels-last strides win only
    # where they are not also plain contiguous.
    if t.layout == torch.strided and not t.is_contiguous():
        if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return torch.contiguous_format


def gather(tensors: Sequence[torch.Tensor], dim: int = 0, destination_index: int | None = None) -> torch.Tensor:
    tensors = list(tensors)
    shape, dim = _check_gather_inputs(tensors, dim)
    memory_format = _suggested_memory_format(tensors[0])
    if any(_suggested_memory_format(t) != memory_format for t in tensors):
        memory_format = torch.contiguous_format
    if destination_index == -1:
        device = torch.device("cpu")
    else:
        device = _device(torch.cuda.current_device() if destination_index is None else destination_index)
    result = torch.empty(shape, dtype=tensors[0].dtype, device=device, memory_format=memory_format)
    return _gather_out_impl(tensors, result, dim)


def gather_out(tensors: Sequence[torch.Tensor], out: torch.Tensor, dim: int = 0) -> torch.Tensor:
    tensors = list(tensors)
    shape, dim = _check_gather_inputs(tensors, dim)
    _check(list(out.shape) == shape, f"Expected out tensor to have shape {shape}, but got {_sizes(out)}")
    return _gather_out_impl(tensors, out, dim)


def _nccl_is_available(tensors: Any) -> bool:
    # Every cuda tensor of this process is emulated: host memory, which NCCL cannot reach.
    return False


_BINDINGS = {
    "_broadcast": broadcast,
    "_broadcast_out": broadcast_out,
    "_broadcast_coalesced": broadcast_coalesced,
    "_scatter": scatter,
    "_scatter_out": scatter_out,
    "_gather": gather,
    "_gather_out": gather_out,
}


def apply_patches() -> None:
    for name, fn in _BINDINGS.items():
        REGISTRY.patch(torch._C, name, fn, owner=OWNER)
    nccl = importlib.import_module("torch.cuda.nccl")
    REGISTRY.patch(nccl, "is_available", _nccl_is_available, owner=OWNER)
