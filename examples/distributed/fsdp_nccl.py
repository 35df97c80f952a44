"""Fully sharded data-parallel training over NCCL: an ordinary torchrun script.

Parameters, gradients and AdamW state are sharded across ranks with ``fully_shard`` (FSDP2, what
torch recommends); ``--wrapper`` uses the older ``FullyShardedDataParallel`` wrapper instead.
Nothing in it knows about torchdevice. On a node with two NVIDIA GPUs:

    torchrun --nproc_per_node=2 examples/distributed/fsdp_nccl.py --out results/

Without GPUs, the same script under torchdevice (NCCL runs as gloo, cuda:N on the host), with
the environment alone activating it (the torchdevice-activate.pth hook) or through its CLI:

    TORCH_DEVICE_BACKEND=cpu torchrun --nproc_per_node=2 examples/distributed/fsdp_nccl.py --out results/
    torchrun --nproc_per_node=2 -m torchdevice run examples/distributed/fsdp_nccl.py --out results/

Every rank writes the full (unsharded) final parameters to ``OUT/rank{N}.pt``. Started without
torchrun (no ``WORLD_SIZE``), it trains the unsharded model on the whole global batch in one
process: the reference the sharded run must match.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

GLOBAL_BATCH = 16
STEPS = 6


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Model(nn.Module):
    def __init__(self, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return Model()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2000 + step)
    x = torch.randn(GLOBAL_BATCH, 8, generator=g)
    y = torch.stack([x.sum(1), x[:, :4].mean(1), x[:, 4:].abs().sum(1)], dim=1)
    return x, y


def shard(model: nn.Module, wrapper: bool, local_rank: int) -> nn.Module:
    if wrapper:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FSDP(model, device_id=local_rank, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({Block}))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_parameters(model: nn.Module, distributed: bool, wrapper: bool) -> dict[str, torch.Tensor]:
    if not distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if wrapper:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model):
            return {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
    # FSDP2 parameters are DTensors sharded on dim 0; full_tensor() all-gathers them.
    return {k: v.full_tensor().detach().cpu() for k, v in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for rank{N}.pt")
    parser.add_argument("--wrapper", action="store_true", help="FullyShardedDataParallel instead of fully_shard")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        local_rank, rank, world_size = 0, 0, 1
    device = torch.device("cuda", local_rank)

    model = build_model().to(device)
    if distributed:
        model = shard(model, args.wrapper, local_rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)

    per_rank = GLOBAL_BATCH // world_size
    for step in range(STEPS):
        x, y = global_batch(step)
        x = x[rank * per_rank : (rank + 1) * per_rank].to(device)
        y = y[rank * per_rank : (rank + 1) * per_rank].to(device)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0 and step % 2 == 0:
            print(f"step {step} loss {loss.item():.4f}")

    params = full_parameters(model, distributed, args.wrapper)
    os.makedirs(args.out, exist_ok=True)
    torch.save(params, os.path.join(args.out, f"rank{rank}.pt"))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
