"""torch.cuda streams and events, checked against CUDA's documented semantics.

Execution is synchronous, so a stream is idle (``query()`` True) once an op returns, except
behind ``torch.cuda._sleep``, whose spin kernel keeps it busy as on a GPU; the rest must hold as
on a GPU: types, identity, current stream per device and thread, event
timing in ms and the errors CUDA raises (c10/cuda/CUDAEvent.h, torch/cuda/streams.py).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch


def test_stream_is_a_torch_stream_on_cuda():
    s = torch.cuda.Stream()
    assert isinstance(s, torch.cuda.Stream) and isinstance(s, torch.Stream)
    assert s.device == torch.device("cuda", 0)
    assert s.device_type == 1 and s.device_index == 0
    assert s.query() is True
    assert s.synchronize() is None
    assert isinstance(s.cuda_stream, int) and s.cuda_stream != 0
    assert repr(s) == f"<torch.cuda.Stream device=cuda:0 cuda_stream={s.cuda_stream:#x}>"
    assert s.__cuda_stream__() == (0, s.cuda_stream)


def test_stream_priorities_clamp_to_cudas_range():
    assert torch.cuda.Stream.priority_range() == (0, -3)
    assert torch.cuda.Stream().priority == 0
    assert torch.cuda.Stream(priority=-1).priority == -1
    assert torch.cuda.Stream(priority=-10).priority == -3  # mapped to the nearest valid priority
    assert torch.cuda.Stream(priority=5).priority == 0
    assert torch.cuda.default_stream().priority == 0


def test_stream_identity_equality_and_hash():
    a, b = torch.cuda.Stream(), torch.cuda.Stream()
    assert a != b
    assert a == a and hash(a) == hash(a)
    assert torch.cuda.current_stream() == torch.cuda.current_stream()
    assert torch.cuda.default_stream() == torch.cuda.current_stream()
    assert torch.cuda.default_stream().cuda_stream == 0  # the legacy default stream's handle
    assert len({a, b, torch.cuda.Stream(stream_id=a.stream_id, device_index=0, device_type=1)}) == 2
    assert not a == torch.Stream(stream_id=a.stream_id, device_index=0, device_type=1)  # torch.cuda.Stream.__eq__


def test_bad_device_raises_cudas_error():
    with pytest.raises(torch.AcceleratorError, match="invalid device ordinal"):
        torch.cuda.Stream(device="cuda:7")


def test_stream_context_and_set_stream():
    default = torch.cuda.default_stream()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert torch.cuda.current_stream() == s
        # The same per-thread state, through the guard (a plain torch.Stream: compare ids).
        assert torch.accelerator.current_stream().stream_id == s.stream_id
        x = torch.ones(4, device="cuda") * 2
    assert torch.cuda.current_stream() == default
    assert x.sum().item() == 8
    torch.cuda.set_stream(s)
    try:
        assert torch.cuda.current_stream() == s
    finally:
        torch.cuda.set_stream(default)
    assert torch.cuda.current_stream() == default
    with torch.cuda.StreamContext(None):  # a no-op context, as documented
        assert torch.cuda.current_stream() == default
    torch.cuda.set_stream(None)  # documented no-op
    assert torch.cuda.current_stream() == default


def test_torch_stream_and_accelerator_set_stream_are_seen_by_torch_cuda():
    s = torch.Stream("cuda:0")
    torch.accelerator.set_stream(s)
    try:
        current = torch.cuda.current_stream()
        assert current.stream_id == s.stream_id and isinstance(current, torch.cuda.Stream)
    finally:
        torch.accelerator.set_stream(torch.cuda.default_stream())


def test_current_stream_is_per_thread():
    s = torch.cuda.Stream()
    seen = {}

    def other_thread():
        seen["stream"] = torch.cuda.current_stream()

    with torch.cuda.stream(s):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert torch.cuda.current_stream() == s
    assert seen["stream"] == torch.cuda.default_stream()


def test_current_stream_is_per_device(run_snippet):
    out = run_snippet(
        """
        s1 = torch.cuda.Stream(device=1)
        print(s1.device)
        with torch.cuda.stream(s1):
            print(torch.cuda.current_device(), torch.cuda.current_stream(1) == s1, torch.cuda.current_stream(0).cuda_stream)
        print(torch.cuda.current_device(), torch.cuda.current_stream(1).cuda_stream)
        with torch.cuda.device(1):
            print(torch.cuda.Stream().device, torch.cuda.default_stream().device)
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.splitlines() == ["cuda:1", "1 True 0", "0 0", "cuda:1 cuda:1"]


def test_wait_and_record_between_streams():
    a, b = torch.cuda.Stream(), torch.cuda.Stream()
    e = a.record_event()
    assert isinstance(e, torch.cuda.Event) and e.query()
    assert b.wait_event(e) is None
    assert b.wait_stream(a) is None
    mine = torch.cuda.Event()
    assert a.record_event(mine) is mine
    x = torch.arange(4.0, device="cuda")
    x.record_stream(a)  # a C++ kernel: tells the allocator x is used on a
    assert torch.equal(x.cpu(), torch.arange(4.0))


def test_event_is_a_torch_event():
    e = torch.cuda.Event(enable_timing=True)
    assert isinstance(e, torch.Event)
    assert repr(e) == "<torch.cuda.Event uninitialized>"
    assert e.device is None  # a CUDA event gets its device when first recorded
    assert e.query() is True  # an unrecorded event is complete
    e.synchronize()
    e.record()
    assert e.device == torch.device("cuda", 0)
    assert repr(e).startswith("<torch.cuda.Event 0x")
    assert e.query() and e.synchronize() is None
    e.wait()
    e.wait(torch.cuda.Stream())


def test_elapsed_time_measures_host_milliseconds():
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    time.sleep(0.05)
    end.record()
    end.synchronize()
    elapsed = start.elapsed_time(end)
    assert isinstance(elapsed, float)
    assert 45.0 <= elapsed < 1000.0


def test_elapsed_time_errors_are_cudas():
    timed, untimed = torch.cuda.Event(enable_timing=True), torch.cuda.Event()
    timed.record()
    untimed.record()
    with pytest.raises(ValueError, match=r"Both events must be created with argument 'enable_timing=True'\."):
        timed.elapsed_time(untimed)
    never = torch.cuda.Event(enable_timing=True)
    with pytest.raises(ValueError, match=r"Both events must be recorded before calculating elapsed time\."):
        timed.elapsed_time(never)


def test_external_stream_wraps_a_handle():
    ext = torch.cuda.ExternalStream(0xABC0)
    assert isinstance(ext, torch.cuda.Stream)
    assert ext.cuda_stream == 0xABC0 and ext.device == torch.device("cuda", 0)
    other = torch.cuda.get_stream_from_external(0xABC0)
    assert other == ext
    with torch.cuda.stream(ext):
        assert torch.cuda.current_stream().cuda_stream == 0xABC0


def test_synchronize_and_capture_queries():
    assert torch.cuda.synchronize() is None
    assert torch.cuda.synchronize("cuda:0") is None
    assert torch.cuda.is_current_stream_capturing() is False
    assert torch.cuda.graphs.is_current_stream_capturing() is False


def test_streams_survive_a_training_step_on_a_side_stream():
    model = torch.nn.Linear(8, 8).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        loss = model(torch.randn(4, 8, device="cuda")).sum()
        loss.backward()
    torch.cuda.current_stream().wait_stream(side)
    assert model.weight.grad is not None and model.weight.grad.device.type == "cuda"


def test_torch_stream_without_an_index_is_on_the_current_device():
    assert torch.Stream("cuda").device_index == torch.cuda.current_device()


def test_event_keeps_its_first_device(run_snippet):
    out = run_snippet(
        """
        e = torch.cuda.Event()
        e.record(torch.cuda.Stream(device=0))
        try:
            e.record(torch.cuda.Stream(device=1))
        except RuntimeError as error:
            print(error)
        s = torch.cuda.Stream(device=1, stream_ptr=0x40)
        print(s.device, s.cuda_stream, torch.cuda.ExternalStream(0x50, device=1).device)
        """,
        TORCHDEVICE_DEVICE_COUNT="2",
    )
    assert out.splitlines() == ["Event device 0 does not match recording stream's device 1.", "cuda:1 64 cuda:1"]


# torch.cuda._sleep's spin kernel: the stream stays busy for its cycles (clock_rate kHz = cycles/ms).
def _sleep_ms(ms: float) -> None:
    torch.cuda._sleep(int(ms * torch.cuda.get_device_properties(0).clock_rate))


def test_sleep_keeps_the_stream_busy_until_synchronized():
    stream = torch.cuda.current_stream()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    stream.record_event(start)
    _sleep_ms(50)
    stream.record_event(end)
    assert not stream.query() and not end.query()  # the spin kernel is still running
    before = time.perf_counter()
    end.synchronize()
    assert time.perf_counter() - before > 0.02
    assert end.query() and stream.query()
    assert 45.0 <= start.elapsed_time(end) < 1000.0


def test_an_event_recorded_before_the_sleep_is_already_complete():
    torch.cuda.synchronize()
    earlier = torch.cuda.Event()
    earlier.record()
    _sleep_ms(30)
    assert earlier.query()
    torch.cuda.synchronize()
    assert torch.cuda.current_stream().query()


def test_blocking_copies_wait_for_the_stream_non_blocking_ones_do_not():
    stream = torch.cuda.current_stream()
    x = torch.randn(100, device="cuda")
    torch.cuda.synchronize()
    _sleep_ms(50)
    y = x.to("cpu", non_blocking=True)
    assert not stream.query() and y.is_pinned()
    stream.synchronize()
    _sleep_ms(50)
    z = x.to("cpu")  # cudaMemcpy semantics: returns once the stream has reached the copy
    assert stream.query() and not z.is_pinned()
    assert torch.equal(y, z)


def test_a_stream_waiting_on_an_event_is_busy_until_it_completes():
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        _sleep_ms(50)
    main = torch.cuda.current_stream()
    assert main.query() and not side.query()  # the sleep went to the side stream only
    main.wait_stream(side)
    assert not main.query()
    torch.cuda.synchronize()
    assert main.query() and side.query()


def test_current_stream_of_a_device_that_does_not_exist_raises_cudas_error():
    with pytest.raises(RuntimeError, match=r"Device index value 1 is out of index range \[0, 1\)"):
        torch.accelerator.current_stream(torch.accelerator.device_count())


@pytest.mark.parametrize(("lookup", "index"), [("default_stream", -5), ("current_stream", 99), ("current_stream", -2)])
def test_stream_of_a_device_index_out_of_range_raises_cudas_error(lookup, index):
    # c10::cuda's check_gpu: only -1 means the current device; any other index must exist.
    with pytest.raises(RuntimeError, match=rf"^Device index value {index} is out of index range \[0, 1\)$"):
        getattr(torch.cuda, lookup)(index)
    assert getattr(torch.cuda, lookup)(-1) == getattr(torch.cuda, lookup)(0)


@pytest.mark.parametrize("use", ["synchronize", "query", "record_event", "wait_event"])
def test_external_stream_with_a_handle_never_handed_out_is_an_invalid_resource_handle(use):
    stream = torch.cuda.ExternalStream(0xDEADBEEF)
    with pytest.raises(torch.AcceleratorError, match="^CUDA error: invalid resource handle\n") as info:
        method = getattr(stream, use)
        method(torch.cuda.Event()) if use == "wait_event" else method()
    assert info.value.error_code == 400  # cudaErrorInvalidResourceHandle


def test_external_stream_of_a_stream_handed_out_works():
    for handle in (0, torch.cuda.Stream().cuda_stream, torch.cuda.current_stream().cuda_stream):
        stream = torch.cuda.ExternalStream(handle)
        stream.synchronize()
        assert stream.query() is True
        stream.wait_event(stream.record_event())
