"""FSDP2 as its tutorials write it, for tests/ops/test_distributed.py (run under torchrun).

The model is built on the meta device, sharded with ``fully_shard`` (per block, then the root)
under a bf16 ``MixedPrecisionPolicy``, materialized with ``to_empty`` and initialized with
``reset_parameters()`` (DTensor random ops), then given rank 0's reference weights through
``set_model_state_dict(broadcast_from_rank0=True)``. It trains, saves a DCP checkpoint, builds a
fresh sharded model, loads the checkpoint into it (model and optimizer) and trains on. Every rank
writes the full parameters and losses to ``OUT/rank{N}.pt``. ``--device cpu`` runs the same
program on CPU tensors: the reference.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard

GLOBAL_BATCH = 8
STEPS_BEFORE, STEPS_AFTER = 3, 3


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.fc(self.norm(x)))


class Model(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


def sharded_model(device_type: str) -> nn.Module:
    with torch.device("meta"):
        model = Model()
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=device_type)
    model.reset_parameters()
    return model


def batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, 32, (GLOBAL_BATCH, 6), generator=g)
    per_rank = GLOBAL_BATCH // world
    tokens = tokens[rank * per_rank : (rank + 1) * per_rank]
    return tokens, tokens.roll(1, dims=1)


def train(model, optimizer, steps, first_step, device, rank, world, losses):
    for step in range(first_step, first_step + steps):
        tokens, targets = (t.to(device) for t in batch(step, rank, world))
        loss = F.cross_entropy(model(tokens).flatten(0, 1).float(), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach().cpu())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()

    local_rank = int(os.environ["LOCAL_RANK"])
    if args.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    model = sharded_model(args.device)
    for p in model.parameters():
        assert p.placements == (Shard(0),) and p.dtype == torch.float32, (p.placements, p.dtype)
        assert p.device.type == args.device, p.device
    model.unshard()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters(recurse=False))
    model.reshard()

    # The reference weights, from rank 0 (the others pass nothing: broadcast_from_rank0). Seeded
    # anew on every rank: reset_parameters drew from the device's generator (cuda or CPU).
    torch.manual_seed(1)
    reference = Model().state_dict()
    full = reference if rank == 0 else {}
    full_options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=full_options)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses: list[torch.Tensor] = []
    train(model, optimizer, STEPS_BEFORE, 0, device, rank, world, losses)

    checkpoint = os.path.join(args.out, "checkpoint")
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=checkpoint)

    resumed = sharded_model(args.device)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    state = {"model": get_model_state_dict(resumed), "optim": get_optimizer_state_dict(resumed, resumed_optimizer)}
    dcp.load(state, checkpoint_id=checkpoint)
    set_model_state_dict(resumed, state["model"])
    set_optimizer_state_dict(resumed, resumed_optimizer, state["optim"])
    train(resumed, resumed_optimizer, STEPS_AFTER, STEPS_BEFORE, device, rank, world, losses)

    params = {k: v.full_tensor().detach().cpu() for k, v in get_model_state_dict(resumed).items()}
    # The full state dict the examples save (gathered, on the CPU, on rank 0 only): the same values.
    offloaded = get_model_state_dict(resumed, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        assert offloaded.keys() == params.keys()
        assert all(offloaded[k].device.type == "cpu" and torch.equal(offloaded[k], params[k]) for k in params)
    torch.save({"params": params, "losses": torch.stack(losses)}, os.path.join(args.out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
