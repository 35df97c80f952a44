"""An MPS-written training script, as a Mac user writes it. With torchdevice it runs anywhere:

    TORCHDEVICE_EMULATE=mps python -m torchdevice run examples/train_mps_mlp.py
"""

import torch
import torch.nn as nn

assert torch.backends.mps.is_available(), "this script needs an MPS device"
device = torch.device("mps")
torch.mps.manual_seed(0)
torch.manual_seed(0)

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
x = torch.randn(512, 20, device=device)
y = (x[:, 0] + x[:, 1] > 0).long()

for step in range(200):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if step % 50 == 0:
        torch.mps.synchronize()
        print(f"step {step:3d}  loss {loss.item():.4f}  mps memory {torch.mps.current_allocated_memory()} bytes")

accuracy = (model(x).argmax(1) == y).float().mean().item()
assert all(p.device.type == "mps" for p in model.parameters())
print(f"final accuracy {accuracy:.3f} on {next(model.parameters()).device}")
