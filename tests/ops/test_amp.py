"""Automatic mixed precision on cuda: the CUDA autocast policy and an enabled, working GradScaler.

Expected behaviour from torch's AMP docs: under ``autocast('cuda', float16)`` matmuls/linear run
in fp16 and ops on the fp32 list (softmax, losses...) in fp32; ``GradScaler`` multiplies the
loss by its scale, skips ``optimizer.step`` when gradients hold inf/NaN and multiplies the scale
by ``backoff_factor``, and multiplies it by ``growth_factor`` after ``growth_interval`` clean steps.
"""

from __future__ import annotations

import copy

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda_follows_the_cuda_policy(dtype):
    a, b = torch.randn(4, 4, device="cuda"), torch.randn(4, 4, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == dtype
        assert (a @ b).dtype == dtype
        assert torch.nn.functional.linear(a, b).dtype == dtype
        assert torch.nn.functional.mse_loss(a @ b, b).dtype == torch.float32  # fp32 list
        assert (a + b).dtype == torch.float32  # untouched ops keep their input dtype
    assert not torch.is_autocast_enabled("cuda")
    with torch.autocast("cuda", dtype=dtype):
        expected = (a.cpu().to(dtype) @ b.cpu().to(dtype)).float()
        assert torch.allclose((a @ b).float().cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", [torch.softmax, torch.log_softmax])
def test_softmax_under_autocast_computes_in_float32(op, dtype):
    x = torch.randn(4, 8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = op(x @ x.T, dim=-1)
    assert out.dtype == torch.float32 and out.device.type == "cuda"


def test_autocast_defaults_to_float16_on_cuda():
    assert torch.amp.autocast_mode.is_autocast_available("cuda")
    with torch.autocast("cuda"):
        assert torch.get_autocast_dtype("cuda") == torch.float16
        assert (torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")).dtype == torch.float16


def test_autocast_leaves_cpu_tensors_alone():
    with torch.autocast("cuda", dtype=torch.float16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_legacy_torch_cuda_amp_autocast():
    with pytest.warns(FutureWarning, match=r"torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"):
        ctx = torch.cuda.amp.autocast(dtype=torch.bfloat16)
    with ctx:
        assert (torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")).dtype == torch.bfloat16


def test_autocast_backward_produces_fp32_grads():
    model = torch.nn.Linear(8, 8).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(torch.randn(4, 8, device="cuda")).float().sum()
    loss.backward()
    assert model.weight.grad.dtype == torch.float32 and model.weight.grad.device.type == "cuda"


def test_gradscaler_is_enabled_on_cuda():
    scaler = torch.amp.GradScaler("cuda")
    assert scaler.is_enabled()
    assert scaler.get_scale() == 65536.0  # default init_scale
    with pytest.warns(FutureWarning):
        legacy = torch.cuda.amp.GradScaler()
    assert legacy.is_enabled()


def _train(device: str, steps: int, inf_at: set[int]):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    data = torch.arange(8.0).reshape(2, 4).to(device) / 8
    scales, skipped = [], []
    for step in range(steps):
        optimizer.zero_grad()
        loss = model(data).sum()
        if step in inf_at:
            loss = loss * float("inf")
        before = model.weight.detach().clone()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
        skipped.append(torch.equal(before, model.weight.detach()))
    return model, scaler, scales, skipped


def test_gradscaler_grows_backs_off_and_skips_steps():
    model, scaler, scales, skipped = _train("cuda", steps=8, inf_at={4})
    # Growth after 3 clean steps (1024 -> 2048), backoff on the inf step, growth again after 3 more.
    assert scales == [1024.0, 1024.0, 2048.0, 2048.0, 1024.0, 1024.0, 1024.0, 2048.0]
    assert skipped == [False, False, False, False, True, False, False, False]
    assert scaler._scale.device == torch.device("cuda", 0)
    assert model.weight.device.type == "cuda"


def test_gradscaler_matches_the_same_loop_on_cpu():
    cuda_model, _, cuda_scales, cuda_skipped = _train("cuda", steps=8, inf_at={2, 5})
    cpu_model, _, cpu_scales, cpu_skipped = _train("cpu", steps=8, inf_at={2, 5})
    assert cuda_scales == cpu_scales and cuda_skipped == cpu_skipped
    assert torch.equal(cuda_model.weight.detach().cpu(), cpu_model.weight.detach())


def test_gradscaler_unscale_and_clip_then_state_dict():
    model = torch.nn.Linear(4, 4).cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(torch.randn(8, 4, device="cuda")).float().pow(2).mean()
    scaler.scale(loss).backward()
    scaled_grad = model.weight.grad.clone()
    scaler.unscale_(optimizer)
    assert torch.allclose(model.weight.grad * 256.0, scaled_grad)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    state = scaler.state_dict()
    restored = torch.amp.GradScaler("cuda")
    restored.load_state_dict(copy.deepcopy(state))
    assert restored.get_scale() == scaler.get_scale() == 256.0
