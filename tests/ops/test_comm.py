"""nn.DataParallel and torch.cuda.comm on the emulated devices (ops/comm.py).

One device runs in this process; two devices need a fresh interpreter (the device count is
fixed at activation), so those checks run as one snippet each and report back as JSON.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.cuda.comm as comm
from torch import nn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).cuda()


def test_data_parallel_on_one_device_is_the_plain_module():
    plain = _model()
    wrapped = nn.DataParallel(copy.deepcopy(plain))
    x = torch.randn(6, 4, device="cuda")
    target = torch.randn(6, 2, device="cuda")
    out, expected = wrapped(x), plain(x)
    assert out.device == torch.device("cuda", 0)
    assert torch.equal(out, expected)
    nn.functional.mse_loss(out, target).backward()
    nn.functional.mse_loss(expected, target).backward()
    for p, q in zip(wrapped.module.parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_data_parallel_apply_functional_form():
    model = _model()
    x = torch.randn(6, 4, device="cuda")
    assert torch.equal(nn.parallel.data_parallel(model, x, device_ids=[0]), model(x))


def test_comm_on_one_device_keeps_the_source_and_copies_nothing():
    x = torch.randn(6, 4, device="cuda")
    assert comm.broadcast(x, [0])[0] is x
    chunks = comm.scatter(x, [0])
    assert chunks[0].data_ptr() == x.data_ptr()  # a chunk on its own device is a view
    assert torch.equal(comm.gather([x[:2], x[2:]], dim=0, destination=0), x)
    assert comm.gather([x], destination="cpu").device == torch.device("cpu")


def test_comm_from_the_host_lands_on_the_device():
    x = torch.randn(5, 3)
    (chunk,) = comm.scatter(x, [0])
    assert chunk.device == torch.device("cuda", 0) and torch.equal(chunk.cpu(), x)
    (copy_,) = comm.broadcast(x, [0])
    assert copy_.is_cuda and torch.equal(copy_.cpu(), x)


def test_comm_out_forms():
    x = torch.arange(12.0, device="cuda").reshape(6, 2)
    outs = [torch.empty(2, 2, device="cuda"), torch.empty(4, 2, device="cuda")]
    comm.scatter(x, out=outs)
    assert torch.equal(outs[0], x[:2]) and torch.equal(outs[1], x[2:])
    gathered = torch.empty(6, 2, device="cuda")
    comm.gather(outs, out=gathered)
    assert torch.equal(gathered, x)
    copies = [torch.empty(6, 2, device="cuda")]
    comm.broadcast(x, out=copies)
    assert torch.equal(copies[0], x)


def test_broadcast_coalesced_keeps_order_across_dtypes():
    tensors = [torch.randn(3, device="cuda"), torch.arange(4, device="cuda"), torch.randn(2, 2, device="cuda")]
    (same,) = comm.broadcast_coalesced(tensors, [0])
    assert all(a is b for a, b in zip(same, tensors))


def test_reduce_add_sums_on_the_destination():
    a, b = torch.randn(4, device="cuda"), torch.randn(4, device="cuda")
    assert torch.equal(comm.reduce_add([a, b], destination=0), a + b)


def test_nccl_is_never_chosen_for_emulated_tensors():
    assert not torch.cuda.nccl.is_available([torch.ones(2, device="cuda")])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: comm.scatter(x, [0], chunk_sizes=[3, 3]),
         "Expected devices and chunk_sizes to be of same length, but got len(devices) = 1 and len(chunk_sizes) = 2"),
        (lambda x: comm.scatter(x, []), "Expected at least one device to scatter to"),
        (lambda x: comm.gather([x, x.cpu()]), "Expected all input tensors to be CUDA tensors, but tensor at index 1 has device"),
        (lambda x: comm.gather([x, x[:, :2]]), "Input tensor at index 1 has invalid shape [6, 2], but expected [6, 4]"),
        (lambda x: comm.broadcast(x, out=[torch.empty(2, device="cuda")]),
         "Expected all output tensors to have same shape as the source tensor [6, 4], but output tensor at index 0 has shape [2]"),
        (lambda x: comm.broadcast(x, out=[torch.empty(6, 4)]),
         "Expected all output tensors to be CUDA tensors, but output tensor at index 0 has device 'cpu'"),
        (lambda x: comm.scatter(x, out=[torch.empty(2, 4, device="cuda")]),
         "Total size for output tensors along scatter dim 0 does not match the source tensor size at dim 0. Expected 6, "
         "but got total size 2"),
        (lambda x: comm.gather([x], out=torch.empty(2, device="cuda")), "Expected out tensor to have shape [6, 4], but got [2]"),
        (lambda x: torch._C._broadcast_coalesced([x.cpu()], [0], 1024), "All tensors must be on devices[0]: 0"),
    ],
)
def test_comm_argument_errors_are_comm_cpp_s(call, message):
    x = torch.randn(6, 4, device="cuda")
    with pytest.raises(RuntimeError) as info:
        call(x)
    assert message in str(info.value)


def test_scatter_checks_the_dimension():
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"):
        comm.scatter(torch.randn(2, 2), [0], dim=2)


_TWO_DEVICE_STEP = """
import copy, json
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).cuda()
reference = copy.deepcopy(model)
x, target = torch.randn(6, 4, device="cuda"), torch.randn(6, 2, device="cuda")
devices_seen = []
model[0].register_forward_hook(lambda m, i, o: devices_seen.append([o.device.index, torch.cuda.current_device()]))

wrapped = nn.DataParallel(model, device_ids=[0, 1])
for net in (wrapped, reference):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    out = net(x)
    nn.functional.mse_loss(out, target).backward()
    optimizer.step()
print(json.dumps({
    "out_device": str(out.device),
    "devices_seen": sorted(devices_seen),
    "param_devices": sorted({str(p.device) for p in model.parameters()}),
    "max_param_diff": max((p - q).abs().max().item() for p, q in zip(model.parameters(), reference.parameters())),
}))
"""


def test_data_parallel_step_on_two_devices_equals_one_device(run_snippet):
    result = json.loads(run_snippet(_TWO_DEVICE_STEP, TORCHDEVICE_DEVICE_COUNT="2"))
    assert result["devices_seen"] == [[0, 0], [1, 1]]  # one replica per device, on its own thread's device
    assert result["param_devices"] == ["cuda:0"]
    assert result["max_param_diff"] < 1e-6  # the gradient sum's order only


_TWO_DEVICE_COMM = """
import json
import torch.cuda.comm as comm

x = torch.randn(6, 4, device="cuda:0")
result = {}
copies = comm.broadcast(x, [0, 1])
result["broadcast"] = [copies[0] is x, str(copies[1].device), torch.equal(copies[1].cpu(), x.cpu())]
tensors = [x, torch.arange(3, device="cuda"), torch.randn(2, device="cuda")]
coalesced = comm.broadcast_coalesced(tensors, [0, 1])
result["coalesced"] = [[t.device.index for t in group] for group in coalesced] + [
    [t.dtype == s.dtype and torch.equal(t.cpu(), s.cpu()) for t, s in zip(coalesced[1], tensors)]]
coalesced[1][0].add_(1)  # its own version counter: the others' stay unchanged
result["versions"] = [t._version for t in coalesced[1]]
chunks = comm.scatter(x, [1, 0], chunk_sizes=[4, 2], dim=0)
result["scatter"] = [str(c.device) for c in chunks] + [list(c.shape) for c in chunks]
result["gather"] = [torch.equal(comm.gather(chunks, 0, destination=0), x), str(comm.gather(chunks, destination=1).device),
                    str(comm.gather(chunks, destination=-1).device)]
result["reduce_add"] = torch.equal(comm.reduce_add([x, copies[1]], destination=1).cpu(), (x + x).cpu())
outs = [torch.empty(3, 4, device="cuda:1"), torch.empty(3, 4, device="cuda:0")]
comm.scatter(x, out=outs)
result["scatter_out"] = torch.equal(torch.cat([o.cpu() for o in outs]), x.cpu())
stream = torch.cuda.Stream(device=1)
try:
    comm.scatter(x.cpu(), [0, 1], streams=[stream, None])
except RuntimeError as e:
    result["stream_error"] = str(e)
print(json.dumps(result))
"""


def test_comm_across_two_devices(run_snippet):
    result = json.loads(run_snippet(_TWO_DEVICE_COMM, TORCHDEVICE_DEVICE_COUNT="2"))
    assert result["broadcast"] == [True, "cuda:1", True]
    assert result["coalesced"] == [[0, 0, 0], [1, 1, 1], [True, True, True]]
    assert result["versions"] == [1, 0, 0]
    assert result["scatter"] == ["cuda:1", "cuda:0", [4, 4], [2, 4]]
    assert result["gather"] == [True, "cuda:1", "cpu"]
    assert result["reduce_add"] is True
    assert result["scatter_out"] is True
    assert result["stream_error"] == (
        "Expected the device associated with the stream at index 0 (was 1) to match the device supplied at that "
        "index (expected 0)")
