"""torchdevice benchmark: each workload natively on CPU and on emulated cuda, interleaved in one
process, several repeats; prints the median ratio emulated/native with its min-max.

    python bench/run.py            # all workloads
    python bench/run.py --quick    # fewer repeats
    python bench/run.py --only a c

Ratios, not absolute times: the machine is shared and noisy, and both sides see the same noise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torchdevice  # noqa: F401 - before torch

import torch
import torch.nn as nn

WORKLOADS = {}


def workload(key: str, title: str):
    def register(fn):
        WORKLOADS[key] = (title, fn)
        return fn

    return register


def timeit(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def interleaved(native, emulated, number: int, repeats: int) -> list[float]:
    """Ratios emulated/native, one per repeat, the two sides alternating."""
    native(), emulated()  # warm up (allocator, first-call caches)
    ratios = []
    for _ in range(repeats):
        t_native = timeit(native, number)
        t_emulated = timeit(emulated, number)
        ratios.append(t_emulated / t_native)
    return ratios


@workload("a", "x + y, 16-element float tensors")
def tiny_add(repeats):
    x, y = torch.randn(16), torch.randn(16)
    xc, yc = x.cuda(), y.cuda()
    return interleaved(lambda: x + y, lambda: xc + yc, 20000, repeats)


@workload("b", "torch.zeros(16, device=...)")
def factory(repeats):
    # Both sides name their device: parsing device= costs the same ~0.4 us either way.
    return interleaved(lambda: torch.zeros(16, device="cpu"), lambda: torch.zeros(16, device="cuda"), 20000, repeats)


@workload("c", "torch.mm 64x64")
def mm(repeats):
    a = torch.randn(64, 64)
    ac = a.cuda()
    return interleaved(lambda: torch.mm(a, a), lambda: torch.mm(ac, ac), 2000, repeats)


@workload("d", "x.cuda() of 1 MiB vs x.clone()")
def to_device(repeats):
    x = torch.randn(256 * 1024)
    return interleaved(lambda: x.clone(), lambda: x.cuda(), 500, repeats)


def mlp_step(device: str, fused: bool):
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=not fused, fused=fused or None)
    x = torch.randn(64, 1024, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return step


@workload("e1", "MLP 4x1024, batch 64, fwd+bwd+AdamW (foreach)")
def mlp_foreach(repeats):
    return interleaved(mlp_step("cpu", False), mlp_step("cuda", False), 5, repeats)


@workload("e2", "MLP 4x1024, batch 64, fwd+bwd+AdamW (fused)")
def mlp_fused(repeats):
    return interleaved(mlp_step("cpu", True), mlp_step("cuda", True), 5, repeats)


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


def gpt_step(device: str, layers=4, d=256, seq=128, batch=8, vocab=1024):
    torch.manual_seed(0)
    emb = nn.Embedding(vocab, d)
    model = nn.Sequential(*[Block(d, 4) for _ in range(layers)], nn.LayerNorm(d), nn.Linear(d, vocab))
    params = list(emb.parameters()) + list(model.parameters())
    emb.to(device), model.to(device)
    opt = torch.optim.AdamW(params, lr=1e-3)
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(emb(tokens[:, :-1]))
        nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        opt.step()

    return step


@workload("f", "GPT-style step: 4 layers, d=256, seq 128, batch 8")
def transformer(repeats):
    return interleaved(gpt_step("cpu"), gpt_step("cuda"), 2, repeats)


def fresh(code: str, env: dict | None = None) -> str:
    """The last line ``python -c code`` prints, run with ``env`` (default: this process's environment)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ) if env is None else env)
    return out.stdout.strip().splitlines()[-1]


def is_torchdevice_variable(name: str) -> bool:
    return name == "TORCH_DEVICE_BACKEND" or name.startswith("TORCHDEVICE_")


def plain_env(environ=os.environ) -> dict:
    """``environ`` without torchdevice's variables: a process started with it is plain python.

    With TORCH_DEVICE_BACKEND set, torchdevice's .pth hook imports it at interpreter start,
    before any timer in the process runs.
    """
    return {k: v for k, v in environ.items() if not is_torchdevice_variable(k)}


def import_timers(environ=os.environ) -> tuple[str, str]:
    """The code timing ``import torch`` alone and ``import torchdevice`` (which imports torch).

    Both run with :func:`plain_env`; the second sets torchdevice's variables from ``environ``
    itself, after start-up, so that activation happens inside the timed import.
    """
    timer = "import os, time; os.environ.update({env!r}); t=time.perf_counter(); import {m}; print(time.perf_counter()-t)"
    torchdevice_env = {k: v for k, v in environ.items() if is_torchdevice_variable(k)}
    return timer.format(env={}, m="torch"), timer.format(env=torchdevice_env, m="torchdevice")


@workload("g", "import torchdevice wall time beyond import torch (seconds, fresh processes)")
def import_overhead(repeats):
    plain, with_torchdevice = import_timers()
    diffs = []
    for _ in range(repeats):
        base = float(fresh(plain, plain_env()))
        with_td = float(fresh(with_torchdevice, plain_env()))
        diffs.append(with_td - base)
    return diffs


@workload("h", "peak RSS of (f), emulated vs native (fresh processes)")
def peak_rss(repeats):
    code = ("import sys, resource; sys.path.insert(0, {here!r}); import run; "
            "step = run.gpt_step({dev!r}); [step() for _ in range(3)]; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    here = os.path.dirname(os.path.abspath(__file__))
    ratios = []
    for _ in range(max(1, repeats // 2)):
        native = int(fresh(code.format(here=here, dev="cpu")))
        emulated = int(fresh(code.format(here=here, dev="cuda")))
        ratios.append(emulated / native)
    return ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="workload keys")
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    results = {}
    print(f"torch {torch.__version__}, torchdevice {torchdevice.__version__}, {os.cpu_count()} cores, "
          f"{repeats} repeats; ratio = emulated / native CPU (median, min-max)")
    for key, (title, fn) in WORKLOADS.items():
        if args.only and key not in args.only:
            continue
        values = fn(repeats)
        med = statistics.median(values)
        results[key] = {"title": title, "median": med, "min": min(values), "max": max(values)}
        unit = " s" if key == "g" else ""
        print(f"  ({key:>2}) {title:<66} {med:6.3f}{unit}  [{min(values):.3f}-{max(values):.3f}]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
