"""Data-parallel training with DistributedDataParallel over NCCL: an ordinary torchrun script.

Nothing in it knows about torchdevice. On a node with two NVIDIA GPUs:

    torchrun --nproc_per_node=2 examples/distributed/ddp_nccl.py --out results/

Without GPUs, the same script under torchdevice (NCCL runs as gloo, cuda:N on the host), with
the environment alone activating it (the torchdevice-activate.pth hook) or through its CLI:

    TORCH_DEVICE_BACKEND=cpu torchrun --nproc_per_node=2 examples/distributed/ddp_nccl.py --out results/
    torchrun --nproc_per_node=2 -m torchdevice run examples/distributed/ddp_nccl.py --out results/

Every rank writes its final parameters to ``OUT/rank{N}.pt``. Started without torchrun (no
``WORLD_SIZE``), it trains the same model on the whole global batch in one process and writes
``OUT/rank0.pt``: the reference the data-parallel run must match.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

GLOBAL_BATCH = 32
STEPS = 12  # past DDP's first sampling iterations, which time forward and backward


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's whole batch, the same on every rank (as a seeded sampler would give it)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 16, generator=g)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:8].prod(1), x[:, 8:].mean(1), x.norm(dim=1)], dim=1)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for rank{N}.pt")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        local_rank, rank, world_size = 0, 0, 1
    device = torch.device("cuda", local_rank)

    model = build_model().cuda()
    if distributed:
        model = DDP(model, device_ids=[local_rank])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    per_rank = GLOBAL_BATCH // world_size
    for step in range(STEPS):
        x, y = global_batch(step)
        x = x[rank * per_rank : (rank + 1) * per_rank].pin_memory().to(device, non_blocking=True)
        y = y[rank * per_rank : (rank + 1) * per_rank].to(device)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and step % 4 == 0:
            print(f"step {step} loss {loss.item():.4f}")

    module = model.module if distributed else model
    os.makedirs(args.out, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, os.path.join(args.out, f"rank{rank}.pt"))
    if distributed:
        dist.barrier(device_ids=[local_rank])
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
