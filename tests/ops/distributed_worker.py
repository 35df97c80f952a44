"""One rank of tests/ops/test_distributed.py's checks of what torchdevice adds on top of gloo.

Run under ``torchrun --nproc_per_node=2 -m torchdevice run`` with the output directory as the
only argument; writes ``rank{N}.pt`` with what each check returned. Written as a CUDA program
for NCCL would be: nothing here names gloo or torchdevice.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


def churn(device: torch.device) -> None:
    """Allocate and fill memory, so that freed blocks are reused with other contents."""
    for _ in range(8):
        torch.full((1 << 16,), -1.0, device=device)


def main() -> None:
    out_dir = sys.argv[1]
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    options = dist.ProcessGroupNCCL.Options()
    options.is_high_priority_stream = True
    options.config.cta_policy = dist.ProcessGroupNCCL.NCCL_CTA_POLICY_ZERO
    dist.init_process_group(backend="cpu:gloo,cuda:nccl", pg_options=options, device_id=device)
    rank, world = dist.get_rank(), dist.get_world_size()
    r: dict[str, object] = {
        "backend": dist.get_backend(),
        "nccl_available": dist.is_nccl_available(),
        "backend_available": dist.is_backend_available(dist.Backend.NCCL),
        "bound_device": str(dist.group.WORLD.bound_device_id),
        "current_device": torch.cuda.current_device(),
    }

    # Groups asked for as NCCL in each spelling, and one inheriting the default group's backend.
    for name, backend in (("nccl", "nccl"), ("cuda_nccl", "cuda:nccl"), ("inherited", None)):
        group = dist.new_group(backend=backend, pg_options=dist.ProcessGroupNCCL.Options() if backend else None)
        t = torch.full((2,), float(rank + 1), device=device)
        dist.all_reduce(t, group=group)
        r[f"group_{name}"] = (dist.get_backend(group), t.cpu())

    # ReduceOp.PREMUL_SUM, which gloo lacks.
    t = torch.full((3,), float(rank + 1), device=device)
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.5))
    r["premul_all_reduce"] = t.cpu()
    inp = torch.arange(2 * world, device=device, dtype=torch.float) + rank
    out = torch.empty(2, device=device)
    dist.reduce_scatter_tensor(out, inp, op=dist._make_nccl_premul_sum(torch.tensor(2.0, device=device)))
    r["premul_reduce_scatter"] = (out.cpu(), inp.cpu())
    t = torch.full((3,), float(rank + 2), device=device)
    dist.reduce(t, dst=0, op=dist._make_nccl_premul_sum(0.5))
    r["premul_reduce"] = t.cpu()

    # all_gather with a different size on each rank, as ProcessGroupNCCL allows.
    outs = [torch.empty(i + 1, device=device) for i in range(world)]
    dist.all_gather(outs, torch.full((rank + 1,), float(rank + 1), device=device))
    r["uneven_all_gather"] = [o.cpu() for o in outs]
    outs = [torch.empty(i + 1, 2, device=device) for i in range(world)]
    dist.all_gather(outs, torch.full((rank + 1, 2), float(rank + 1), device=device), async_op=True).wait()
    r["uneven_all_gather_async"] = [o.cpu() for o in outs]

    # Asynchronous collectives: NCCL's works keep their tensors alive until they complete, so a
    # temporary can be handed to one and dropped.
    kept: list[torch.Tensor] = []
    for i in range(6):
        x = torch.full((1 << 14,), float(i + rank), device=device)
        kept.append(x)
        dist.all_reduce(x, async_op=True)
    dist.barrier()
    r["async_all_reduce"] = [(x.min().item(), x.max().item()) for x in kept]
    if rank == 0:
        work = dist.isend(torch.full((1 << 16,), 5.0, device=device), 1)
        churn(device)
        work.wait()
    elif rank == 1:
        x = torch.empty(1 << 16, device=device)
        dist.recv(x, 0)
        r["isend_temporary"] = (x.min().item(), x.max().item())
    outputs = [torch.zeros(2 * world, device=device) for _ in range(3)]
    with dist._coalescing_manager(async_ops=True) as manager:
        for i, o in enumerate(outputs):
            dist.all_gather_into_tensor(o, torch.full((2,), float(10 * i + rank), device=device))
    churn(device)
    manager.wait()
    r["coalesced_all_gather"] = [o.cpu() for o in outputs]
    gathered = [
        funcol.all_gather_tensor(torch.full((1 << 12,), float(rank + 1), device=device), 0, dist.group.WORLD)
        for _ in range(3)
    ]
    churn(device)
    r["functional_all_gather"] = [(g[: 1 << 12].unique().tolist(), g[1 << 12 :].unique().tolist()) for g in gathered]

    dist.barrier(device_ids=[local_rank])
    torch.save(r, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
