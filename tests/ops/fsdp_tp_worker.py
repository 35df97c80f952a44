"""2-D parallelism as PyTorch's FSDP+TP tutorial writes it, for tests/ops/test_distributed.py.

Run with torchrun on 4 ranks: a (dp=2, tp=2) mesh; attention projections and the MLP are split
with ``ColwiseParallel``/``RowwiseParallel`` (the q/k/v outputs stay DTensors, so
``scaled_dot_product_attention`` runs on DTensors and DTensor picks its sharding rule), then
``fully_shard`` shards over dp. Without torchrun it trains the same model in one process on the
whole batch: the reference. Rank 0 (or the single process) writes the losses and the full
gradients of the first step to ``OUT/result.pt``.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

WIDTH, HEADS, SEQ, BATCH, STEPS = 16, 4, 6, 4, 3
ATTENTION_INPUTS: set[str] = set()  # the types SDPA was called with


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(3))
        self.wo = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (w(x).view(b, t, -1, WIDTH // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        ATTENTION_INPUTS.add(type(q).__name__)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, WIDTH)
        self.attention = Attention()
        self.w1, self.w2 = nn.Linear(WIDTH, 2 * WIDTH), nn.Linear(2 * WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.attention(x)
        x = x + self.w2(F.gelu(self.w1(x)))
        return self.head(x)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7 + step)
    tokens = torch.randint(0, 32, (BATCH, SEQ), generator=g)
    return tokens, tokens.roll(1, dims=1)


def parallelize(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = mesh["tp"]
    # Local heads: HEADS / tp per rank; q/k/v stay DTensors into the attention.
    plan = {f"attention.{w}": ColwiseParallel(use_local_output=False) for w in ("wq", "wk", "wv")}
    plan["attention.wo"] = RowwiseParallel(input_layouts=Shard(-1))
    plan["w1"], plan["w2"] = ColwiseParallel(), RowwiseParallel()
    parallelize_module(model, tp, plan)
    fully_shard(model, mesh=mesh["dp"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    torch.manual_seed(0)
    model = Model()
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh

        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        mesh = init_device_mesh("cuda", (2, 2), mesh_dim_names=("dp", "tp"))
        dp_rank, rank = mesh["dp"].get_local_rank(), dist.get_rank()
        model = parallelize(model.cuda(), mesh)
    else:
        dp_rank, rank = 0, 0
        model = model.cuda()
    device = torch.device("cuda", torch.cuda.current_device())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    losses, first_grads = [], None
    per_dp = BATCH // 2 if distributed else BATCH
    for step in range(STEPS):
        tokens, targets = batch(step)
        tokens = tokens[dp_rank * per_dp : (dp_rank + 1) * per_dp].to(device)
        targets = targets[dp_rank * per_dp : (dp_rank + 1) * per_dp].to(device)
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        if first_grads is None:
            first_grads = {
                k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().cpu()
                for k, p in model.named_parameters()
            }
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.detach()
        if distributed:  # the global batch's mean loss
            dist.all_reduce(loss, group=mesh["dp"].get_group())
            loss /= 2
        losses.append(loss.cpu())
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        torch.save({"losses": torch.stack(losses), "grads": first_grads, "attention_inputs": sorted(ATTENTION_INPUTS)},
                   os.path.join(args.out, "result.pt"))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
