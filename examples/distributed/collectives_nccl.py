"""Sharded data parallelism written with NCCL collectives by hand: an ordinary torchrun script.

ZeRO-style SGD: each step, gradients are averaged and split across ranks with
``reduce_scatter_tensor``, every rank updates only its shard of the parameters (and of the
momentum), and ``all_gather_into_tensor`` puts the full parameters back together. After training
the script also exercises the other collectives a CUDA program commonly uses and records what they
returned. Nothing in it knows about torchdevice. On a node with two NVIDIA GPUs:

    torchrun --nproc_per_node=2 examples/distributed/collectives_nccl.py --out results/

Without GPUs, the same script under torchdevice (NCCL runs as gloo, cuda:N on the host), with
the environment alone activating it (the torchdevice-activate.pth hook) or through its CLI:

    TORCH_DEVICE_BACKEND=cpu torchrun --nproc_per_node=2 examples/distributed/collectives_nccl.py --out results/
    torchrun --nproc_per_node=2 -m torchdevice run examples/distributed/collectives_nccl.py --out results/

Every rank writes ``OUT/rank{N}.pt``: its final parameters and the collectives' results. Started
without torchrun (no ``WORLD_SIZE``), it trains on the whole global batch in one process, with
no collectives: the reference the sharded run must match.
"""

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

GLOBAL_BATCH = 24
STEPS = 8
LR = 0.05
MOMENTUM = 0.9


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3000 + step)
    x = torch.randn(GLOBAL_BATCH, 6, generator=g)
    return x, torch.stack([x.sum(1), x[:, :3].prod(1), x.max(1).values], dim=1)


def train(rank: int, world_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    model = build_model().to(device)
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    shard_size = math.ceil(numel / world_size)
    padded = shard_size * world_size  # reduce_scatter_tensor needs world_size equal parts

    flat = torch.zeros(padded, device=device)
    flat[:numel] = parameters_to_vector(params)
    shard = flat[rank * shard_size : (rank + 1) * shard_size].clone()
    momentum = torch.zeros_like(shard)

    per_rank = GLOBAL_BATCH // world_size
    for step in range(STEPS):
        x, y = global_batch(step)
        x = x[rank * per_rank : (rank + 1) * per_rank].to(device)
        y = y[rank * per_rank : (rank + 1) * per_rank].to(device)
        loss = F.mse_loss(model(x), y)
        model.zero_grad(set_to_none=False)
        loss.backward()

        grads = torch.zeros(padded, device=device)
        grads[:numel] = torch.cat([p.grad.reshape(-1) for p in params])
        grad_shard = torch.empty(shard_size, device=device)
        if world_size > 1:
            dist.reduce_scatter_tensor(grad_shard, grads, op=dist.ReduceOp.AVG)
        else:
            grad_shard.copy_(grads)

        momentum.mul_(MOMENTUM).add_(grad_shard)
        shard.add_(momentum, alpha=-LR)

        full = torch.empty(padded, device=device)
        if world_size > 1:
            dist.all_gather_into_tensor(full, shard)
        else:
            full.copy_(shard)
        vector_to_parameters(full[:numel], params)
        if rank == 0 and step % 4 == 0:
            print(f"step {step} loss {loss.item():.4f}")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def collectives(rank: int, world_size: int, device: torch.device) -> dict[str, object]:
    """What each collective returns on this rank, for the caller to check."""
    out: dict[str, object] = {}

    t = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(t)
    out["all_reduce_sum"] = t

    t = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    out["all_reduce_avg"] = t

    t = torch.tensor([rank, -rank], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out["all_reduce_max_int"] = t

    t = torch.arange(3, device=device, dtype=torch.float) + 10 * rank
    dist.broadcast(t, src=0)
    out["broadcast"] = t

    gathered = [torch.empty(2, device=device) for _ in range(world_size)]
    dist.all_gather(gathered, torch.full((2,), float(rank), device=device))
    out["all_gather"] = gathered

    stacked = torch.empty(world_size, 3, device=device, dtype=torch.bfloat16)
    dist.all_gather_into_tensor(stacked, torch.full((3,), float(rank), device=device, dtype=torch.bfloat16))
    out["all_gather_into_tensor_stacked"] = stacked

    scattered = torch.empty(2, device=device)
    stacked = torch.arange(2 * world_size, device=device, dtype=torch.float).view(world_size, 2) * (rank + 1)
    dist.reduce_scatter_tensor(scattered, stacked)
    out["reduce_scatter_tensor_stacked"] = scattered

    scattered = torch.empty(2, device=device)
    dist.reduce_scatter(scattered, [torch.full((2,), float(rank + i), device=device) for i in range(world_size)])
    out["reduce_scatter"] = scattered

    exchanged = torch.empty(world_size, device=device)
    dist.all_to_all_single(exchanged, torch.arange(world_size, device=device, dtype=torch.float) + 100 * rank)
    out["all_to_all_single"] = exchanged

    t = torch.full((2,), float(rank + 1), device=device)
    dist.reduce(t, dst=0)
    out["reduce"] = t  # the sum on rank 0; every other rank's tensor is left as it was

    # A ring: send to the next rank, receive from the previous one.
    received = torch.empty(3, device=device)
    ops = [
        dist.P2POp(dist.isend, torch.full((3,), float(rank), device=device), (rank + 1) % world_size),
        dist.P2POp(dist.irecv, received, (rank - 1) % world_size),
    ]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    out["ring"] = received

    if rank == 0:
        dist.send(torch.tensor([7.0, 8.0], device=device), dst=1)
        out["send_recv"] = None
    elif rank == 1:
        t = torch.empty(2, device=device)
        dist.recv(t, src=0)
        out["send_recv"] = t

    t = torch.full((1000,), float(rank), device=device)
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    out["all_reduce_async"] = t

    dist.barrier(device_ids=[device.index])
    return {name: to_cpu(value) for name, value in out.items()}


def to_cpu(value: object) -> object:
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    return value.cpu() if isinstance(value, torch.Tensor) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for rank{N}.pt")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        local_rank, rank, world_size = 0, 0, 1
    device = torch.device("cuda", local_rank)

    result = {"params": train(rank, world_size, device)}
    if distributed:
        result["collectives"] = collectives(rank, world_size, device)
        result["devices"] = {"current": torch.cuda.current_device(), "count": torch.cuda.device_count()}
    os.makedirs(args.out, exist_ok=True)
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
