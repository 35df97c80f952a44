"""CUDA's memory history and snapshots on the emulated device (ops/memory_history.py)."""

from __future__ import annotations

import gc
import pickle

import pytest
import torch
from torch.cuda import _memory_viz


@pytest.fixture
def recording():
    gc.collect()
    torch.cuda.memory._record_memory_history(max_entries=100000, stacks="python")
    try:
        yield
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


def _train_step():  # the allocations of interest happen in this file: their frames name it
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).cuda()
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(16, 32, device="cuda"), torch.randn(16, 4, device="cuda")
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return model, optimizer, loss


def test_snapshot_blocks_add_up_to_the_allocator_counts(recording):
    kept = _train_step()
    snapshot = torch.cuda.memory._snapshot()
    segments = [s for s in snapshot["segments"] if s["device"] == 0]
    assert segments
    blocks = [b for s in segments for b in s["blocks"]]
    assert all(b["state"] == "active_allocated" for b in blocks)
    # The step's blocks, with their stacks; this worker's earlier tests may hold memory that
    # only C++ references (the exact sums are checked in a fresh process below).
    model, optimizer, _ = kept
    addresses = {b["address"]: b for b in blocks}
    for p in model.parameters():
        block = addresses[p.untyped_storage().data_ptr()]
        assert block["size"] == p.untyped_storage().nbytes()
        assert any(f["filename"] == __file__ for f in block["frames"])
    assert sum(b["size"] for b in blocks) <= torch.cuda.memory_allocated()
    assert sum(s["total_size"] for s in segments) <= torch.cuda.memory_reserved()
    assert torch.cuda.memory_snapshot() == snapshot["segments"]
    del kept


def test_events_carry_the_users_file_and_line(recording):
    kept = _train_step()
    del kept
    gc.collect()
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    actions = {e["action"] for e in trace}
    assert {"alloc", "free_requested", "free_completed", "segment_alloc", "segment_free"} <= actions
    allocs = [e for e in trace if e["action"] == "alloc"]
    assert any(f["filename"] == __file__ and f["name"] == "_train_step" and f["line"] > 0
               for e in allocs for f in e["frames"])
    frees = [e for e in trace if e["action"] == "free_completed"]
    assert frees and all(e["size"] > 0 for e in frees)
    # Every block allocated and freed while recording is gone from the snapshot's segments.
    live = {s["address"] for s in torch.cuda.memory._snapshot()["segments"]}
    assert not live & {e["addr"] for e in frees} - {e["addr"] for e in allocs if e["time_us"] > frees[-1]["time_us"]}


def test_memory_viz_renders_the_dumped_snapshot(recording, tmp_path):
    kept = _train_step()
    path = tmp_path / "snapshot.pickle"
    torch.cuda.memory._dump_snapshot(str(path))
    with open(path, "rb") as f:
        snapshot = pickle.load(f)
    assert snapshot["segments"]
    html = _memory_viz.trace_plot(snapshot)
    assert "<html" in html.lower() or "<script" in html.lower()
    assert "<script" in _memory_viz.segment_plot(snapshot).lower()
    assert "segment" in _memory_viz.segsum(snapshot).lower()
    del kept


def test_without_recording_a_snapshot_lists_the_live_blocks_without_frames():
    torch.cuda.memory._record_memory_history(enabled=None)
    x = torch.empty(1000, device="cuda")
    view = x[10:]  # one block, however many tensors share it
    snapshot = torch.cuda.memory._snapshot()
    mine = [s for s in snapshot["segments"] if s["address"] == x.data_ptr()]
    assert len(mine) == 1 and mine[0]["total_size"] == 4000 and mine[0]["frames"] == []
    assert mine[0]["blocks"] == [{"address": x.data_ptr(), "size": 4000, "requested_size": 4000,
                                  "state": "active_allocated", "frames": []}]
    assert all(t == [] for t in snapshot["device_traces"])
    address = x.data_ptr()
    del x, view
    assert address not in {s["address"] for s in torch.cuda.memory._snapshot()["segments"]}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="enabled"):
        torch.cuda.memory._record_memory_history(enabled="sometimes")
    # CUDA's binding takes max_entries as a size_t: pybind refuses a negative count.
    with pytest.raises(TypeError, match=r"^_cuda_record_memory_history\(\): incompatible function arguments") as info:
        torch.cuda.memory._record_memory_history(max_entries=-5)
    assert str(info.value).endswith("\n\nInvoked with: 'all', 'all', 'all', -5, False, False, False, []")
    assert not torch.cuda.memory._snapshot()["device_traces"][0]  # nothing started recording


def test_recorded_over_a_step_blocks_equal_the_allocator_counts(run_snippet):
    # The model and optimizer exist before recording starts: their blocks are listed too
    # (without frames, as CUDA lists blocks allocated before recording).
    out = run_snippet(
        """
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
        optimizer = torch.optim.Adam(model.parameters())
        x = torch.randn(8, 16, device="cuda")
        torch.cuda.memory._record_memory_history(stacks="python")
        for _ in range(2):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        blocks = [b for s in snapshot["segments"] for b in s["blocks"]]
        before = {p.data_ptr() for p in model.parameters()} | {x.data_ptr()}
        print(sum(b["size"] for b in blocks) == torch.cuda.memory_allocated(),
              sum(s["total_size"] for s in snapshot["segments"]) == torch.cuda.memory_reserved(),
              all(b["frames"] == [] for b in blocks if b["address"] in before),
              all(b["frames"] for b in blocks if b["address"] not in before),
              before <= {b["address"] for b in blocks})
        """
    )
    assert out.split() == ["True"] * 5


def test_recorded_from_the_start_blocks_equal_the_allocator_counts(run_snippet):
    # Recording before the first cuda allocation: every live block is in the snapshot.
    out = run_snippet(
        """
        torch.cuda.memory._record_memory_history(stacks="python")
        model = torch.nn.Linear(16, 16).cuda()
        loss = model(torch.randn(4, 16, device="cuda")).sum()
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        snapshot = torch.cuda.memory._snapshot()
        blocks = sum(b["size"] for s in snapshot["segments"] for b in s["blocks"])
        segments = sum(s["total_size"] for s in snapshot["segments"])
        print(blocks == torch.cuda.memory_allocated(), segments == torch.cuda.memory_reserved(), blocks > 0)
        """
    )
    assert out.split() == ["True", "True", "True"]
