"""Composites that branch on is_cuda() into CUDA-only kernels (RNNs, SDPA, CTC loss, depthwise
convolution) give the CPU result bit for bit on emulated cuda, gradients included."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def _forward_backward(module, *inputs):
    out = module(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True),
        lambda: nn.GRU(6, 8, num_layers=2),
        lambda: nn.RNN(6, 8, nonlinearity="relu"),
        lambda: nn.LSTMCell(6, 8),
        lambda: nn.GRUCell(6, 8),
        lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1),  # depthwise
        lambda: nn.Conv1d(4, 8, 3, groups=4),
    ],
    ids=["lstm", "gru", "rnn_relu", "lstm_cell", "gru_cell", "depthwise_conv2d", "grouped_conv1d"],
)
def test_module_equals_cpu(make):
    torch.manual_seed(0)
    cpu = make()
    dev = copy.deepcopy(cpu).cuda()
    is_conv = isinstance(cpu, (nn.Conv1d, nn.Conv2d))
    shape = (2, 4, 9, 9) if isinstance(cpu, nn.Conv2d) else (2, 4, 9) if is_conv else (3, 6) if "Cell" in type(cpu).__name__ else (3, 5, 6)
    x = torch.randn(shape, requires_grad=True)
    xd = x.detach().cuda().requires_grad_()
    a = _forward_backward(cpu, x)
    b = _forward_backward(dev, xd)
    assert b.is_cuda
    assert torch.equal(a, b.cpu())
    assert torch.equal(x.grad, xd.grad.cpu())
    for p, q in zip(cpu.parameters(), dev.parameters()):
        assert q.grad.is_cuda and torch.equal(p.grad, q.grad.cpu())


def test_sdpa_equals_cpu_including_shared_inputs():
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    qd = q.detach().cuda().requires_grad_()
    a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    b = F.scaled_dot_product_attention(qd, qd, qd, is_causal=True)
    a.sum().backward()
    b.sum().backward()
    assert b.is_cuda and torch.equal(a, b.cpu())
    assert torch.equal(q.grad, qd.grad.cpu())


def test_ctc_loss_equals_cpu():
    torch.manual_seed(0)
    log_probs = torch.randn(12, 2, 5).log_softmax(2).requires_grad_()
    targets = torch.randint(1, 5, (2, 4))
    lengths_in, lengths_t = torch.full((2,), 12), torch.full((2,), 4)
    a = F.ctc_loss(log_probs, targets, lengths_in, lengths_t)
    lp = log_probs.detach().cuda().requires_grad_()
    b = F.ctc_loss(lp, targets.cuda(), lengths_in, lengths_t)
    a.backward()
    b.backward()
    assert b.is_cuda and torch.equal(a, b.cpu())
    assert torch.equal(log_probs.grad, lp.grad.cpu())


def test_inference_mode_route():
    lstm = nn.LSTM(3, 4).cuda()
    with torch.inference_mode():
        out, _ = lstm(torch.randn(2, 1, 3, device="cuda"))
    assert out.is_cuda
