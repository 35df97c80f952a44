"""DTensor random ops (FSDP2's and tensor parallelism's parameter init, dropout) on emulated cuda.

On cuda meshes DTensor keeps the ranks' random streams in step through CUDA's Philox generator
state, which is 16 bytes: a seed and an offset (``_PhiloxState``). Before a random op on a shard
it moves the offset to where that shard's part of the stream begins, and afterwards every rank
moves it past the whole tensor, so all ranks stay in sync and shards differ. On the cpu runner
the emulated cuda generator has that state itself (runtime/generator.h), and torch's own
``_PhiloxState`` works on it. On a device runner (mps) the state is the runner generator's, whose
layout is not CUDA's, and reading an offset out of it failed with a bare AssertionError (FSDP2's
``reset_parameters`` after ``to_empty``).

For such a state DTensor here sees a (seed, offset) pair too: the seed stands for the
generator's current state (a hash of it), the offset starts at 0 (that state itself), and a
state at another offset is a generator seeded from (seed, offset). It keeps what DTensor relies
on: every rank with the same state and the same op draws the same numbers for the same shard,
different shards draw different ones, and after the op all ranks hold the same new state. It
does not reproduce Philox's other property, that a sharded init equals the unsharded one: as on
a GPU against the CPU, the numbers are not the single-device ones.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from torchdevice.core.patch import REGISTRY
from torchdevice.core.after_import import call_after_import

OWNER = "ops.dtensor_random"
_PHILOX_STATE_BYTES = 16  # CUDA's: uint64 seed, uint64 offset
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive offsets over the seed space


class EmulatedPhiloxState:
    """The (seed, offset) view DTensor takes of a generator state, for the emulated generator."""

    def __init__(self, state: torch.Tensor) -> None:
        self._origin = state.to("cpu")
        digest = hashlib.blake2b(self._origin.numpy().tobytes(), digest_size=8).digest()
        self._seed = int.from_bytes(digest, "little")
        self._offset = torch.zeros(1, dtype=torch.int64)

    @property
    def state(self) -> torch.Tensor:
        offset = int(self._offset.item())
        if offset == 0:
            return self._origin
        generator = torch.Generator()
        generator.manual_seed((self._seed ^ (offset * _GOLDEN)) & _MASK64)
        return generator.get_state()

    @property
    def offset(self) -> torch.Tensor:
        return self._offset

    @offset.setter
    def offset(self, offset: torch.Tensor) -> None:
        if offset.numel() != 1:
            raise AssertionError(f"a Philox offset is one number, got {offset.numel()}")
        self._offset = offset.reshape(1).to(torch.int64).clone()

    @property
    def seed(self) -> torch.Tensor:
        return torch.tensor([self._seed], dtype=torch.uint64)

    @seed.setter
    def seed(self, seed: torch.Tensor) -> None:
        self._seed = int(seed.item()) & _MASK64


def _patch_random(module: Any) -> None:
    philox_state = module._PhiloxState

    def _PhiloxState(state: torch.Tensor):  # noqa: N802 - stands in for the class of that name
        # A real Philox state (a CUDA generator's) keeps torch's own view.
        if state.numel() == _PHILOX_STATE_BYTES:
            return philox_state(state)
        return EmulatedPhiloxState(state)

    REGISTRY.patch(module, "_PhiloxState", _PhiloxState, owner=OWNER)


def apply_patches() -> None:
    if not torch.distributed.is_available():
        return
    # torch.distributed.tensor is imported by the programs that use DTensor, not by torch.
    call_after_import("torch.distributed.tensor._random", _patch_random,
                      "DTensor: could not patch torch.distributed.tensor._random")
