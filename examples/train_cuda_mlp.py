"""Train a small classifier on the GPU: an ordinary CUDA-written PyTorch script.

Nothing in it knows about torchdevice. On a machine without an NVIDIA GPU, run it with

    python -m torchdevice run examples/train_cuda_mlp.py

and it trains on emulated ``cuda:0`` tensors, computed by the CPU.
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvMLP(nn.Module):
    """A small conv front end and an MLP head, for 1x16x16 inputs and 4 classes."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 128),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x)


def make_dataset(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of 16x16 images: a bright bar in one of four places, plus noise."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randn(n, 1, 16, 16, generator=generator)
    for cls in range(4):
        rows = labels == cls
        if cls < 2:
            images[rows, 0, 2 + 8 * cls : 6 + 8 * cls, :] += 0.4  # horizontal bar, top or bottom
        else:
            images[rows, 0, :, 2 + 8 * (cls - 2) : 6 + 8 * (cls - 2)] += 0.4  # vertical bar
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        raise SystemExit("this script needs a CUDA GPU")
    device = "cuda"
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name(0)} (torch {torch.__version__})")

    generator = torch.Generator().manual_seed(0)
    train_x, train_y = make_dataset(2048, generator)
    test_x, test_y = make_dataset(512, generator)
    # Move the whole (small) dataset to the GPU once, as one does when it fits.
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = test_x.cuda(), test_y.cuda()

    model = ConvMLP().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    assert all(p.is_cuda for p in model.parameters()), "parameters should live on the GPU"

    start = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, train_x.shape[0], (args.batch_size,), device=device)
        logits = model(train_x[index])
        loss = F.cross_entropy(logits, train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(dim=1) == test_y).float().mean().item()
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert loss.is_cuda and logits.device == torch.device("cuda", 0)
    print(f"done: {args.steps} steps in {elapsed:.2f}s, final loss {loss.item():.4f}, test accuracy {accuracy:.1%}")


if __name__ == "__main__":
    main()
