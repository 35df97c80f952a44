"""Storages of the emulated device: what torch.multiprocessing asks of them."""

import pytest
import torch


def test_share_cuda_of_a_non_cuda_storage_raises_cudas_error():
    with pytest.raises(RuntimeError, match="_share_cuda_: only available on CUDA"):
        torch.UntypedStorage(4, device="meta")._share_cuda_()
    with pytest.raises(RuntimeError, match="_share_cuda_: only available on CUDA"):
        torch.UntypedStorage(4)._share_cuda_()


def test_share_cuda_of_an_emulated_storage_says_ipc_needs_a_gpu():
    with pytest.raises(RuntimeError, match="CUDA IPC"):
        torch.UntypedStorage(4, device="cuda")._share_cuda_()
