"""accelerate: Accelerator(mixed_precision=...) selects the emulated GPU and runs autocast there."""

from __future__ import annotations

import pytest
import torch

accelerate = pytest.importorskip(
    "accelerate", reason="accelerate is not installed: pip install -c constraints-integration.txt -r requirements-integration.txt"
)


@pytest.fixture
def fresh_state():
    # Accelerator state is a process-wide singleton; each test builds its own.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_accelerator_mixed_precision_on_cuda(fresh_state, precision, dtype):
    accelerator = accelerate.Accelerator(mixed_precision=precision)
    assert accelerator.device == torch.device("cuda")
    assert accelerator.distributed_type == accelerate.DistributedType.NO
    assert (accelerator.scaler is not None) == (precision == "fp16")  # GradScaler only for fp16, as on a GPU

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    dataset = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    hidden_dtypes = set()
    model[0].register_forward_hook(lambda module, args, output: hidden_dtypes.add(output.dtype))
    for features, targets in loader:
        assert features.device.type == "cuda"
        with accelerator.autocast():
            loss = torch.nn.functional.mse_loss(model(features).float(), targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    assert hidden_dtypes == {dtype}  # the Linear really ran under autocast(cuda, dtype)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(loss).item()
