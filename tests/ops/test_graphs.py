"""CUDA graphs on the emulated device: capture records device ops, replay runs them again.

The patterns are the ones PyTorch's CUDA graphs documentation teaches: capture once on a side
stream, copy new data into the static inputs, replay, read the static outputs.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

DEVICE = "cuda"


@pytest.fixture(autouse=True)
def leaves_the_default_stream_current():
    yield
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.cuda.is_current_stream_capturing() is False


def _capture(fn):
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def test_forward_capture_replays_on_new_inputs():
    static_x = torch.randn(4, 8, device=DEVICE)
    weight = torch.randn(8, 3, device=DEVICE)
    assert torch.cuda.is_current_stream_capturing() is False
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert torch.cuda.is_current_stream_capturing() is True
        static_y = torch.sin(static_x @ weight) * 2 + static_x.sum()
    assert torch.cuda.is_current_stream_capturing() is False
    assert static_y.device.type == "cuda" and static_y.shape == (4, 3)
    for _ in range(3):
        x = torch.randn(4, 8, device=DEVICE)
        static_x.copy_(x)
        graph.replay()
        torch.testing.assert_close(static_y, torch.sin(x @ weight) * 2 + x.sum())


def test_capture_does_not_run_the_work_and_replay_reuses_its_memory():
    # As on a GPU, capture only records: an in-place update happens at each replay, not at capture.
    counter = torch.zeros(3, device=DEVICE)
    graph, out = _capture(lambda: counter.add_(1).mul(10))
    assert counter.tolist() == [0.0, 0.0, 0.0]
    pointer = out.data_ptr()
    allocated = torch.cuda.memory_allocated()
    graph.replay()
    graph.replay()
    assert counter.tolist() == [2.0, 2.0, 2.0] and out.tolist() == [20.0, 20.0, 20.0]
    # Static outputs are allocated once, at capture; replay writes the same memory.
    assert out.data_ptr() == pointer
    assert torch.cuda.memory_allocated() == allocated


def test_views_out_arguments_and_host_values():
    static_x = torch.arange(6.0, device=DEVICE)
    scale = torch.tensor(2.0)  # a CPU scalar: passed by value to the kernel, as at launch
    out = torch.empty(0, device=DEVICE)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        head = static_x[:3]  # a view of the static input, made at capture time
        torch.mul(head, scale, out=out)  # resizes out, at capture time
        assert out.shape == (3,)
        static_x[3:].neg_()
        host = torch.ones(2) * 5  # host work runs at capture time, once
    assert host.tolist() == [5.0, 5.0]
    scale.fill_(100.0)  # too late: the captured kernel has its value
    static_x.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    graph.replay()
    assert out.tolist() == [2.0, 4.0, 6.0]
    assert static_x.tolist() == [1.0, 2.0, 3.0, -4.0, -5.0, -6.0]


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW])
def test_whole_training_step_capture_matches_eager_steps(optimizer_class):
    # PyTorch's "whole-network capture" example: warm up on a side stream, capture forward,
    # backward and a capturable optimizer step, then replay once per batch.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(DEVICE)
    reference = copy.deepcopy(model)
    loss_fn = torch.nn.MSELoss()
    optimizer = optimizer_class(model.parameters(), lr=0.05, capturable=True)
    reference_optimizer = optimizer_class(reference.parameters(), lr=0.05, capturable=True)
    batches = [(torch.randn(5, 8, device=DEVICE), torch.randn(5, 4, device=DEVICE)) for _ in range(7)]

    def eager_step(net, opt, x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    static_input = torch.randn(5, 8, device=DEVICE)
    static_target = torch.randn(5, 4, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # capturable=True outside capture warns, as on a GPU
        for x, y in batches[:3]:
            eager_step(model, optimizer, x, y)
            eager_step(reference, reference_optimizer, x, y)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_fn(model(static_input), static_target)
        static_loss.backward()
        optimizer.step()
    # Capturing did not train: the parameters are still those of the three warmup steps.
    torch.testing.assert_close(list(model.parameters()), list(reference.parameters()))

    for x, y in batches[3:]:
        static_input.copy_(x)
        static_target.copy_(y)
        graph.replay()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected_loss = eager_step(reference, reference_optimizer, x, y)
        torch.testing.assert_close(static_loss, expected_loss)
    torch.testing.assert_close(list(model.parameters()), list(reference.parameters()))
    torch.testing.assert_close(
        [p.grad for p in model.parameters()], [p.grad for p in reference.parameters()]
    )


def test_make_graphed_callables_matches_eager_forward_and_backward():
    torch.manual_seed(1)
    first = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()).to(DEVICE)
    second = torch.nn.Linear(8, 2).to(DEVICE)
    eager_first, eager_second = copy.deepcopy(first), copy.deepcopy(second)
    sample_x = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    sample_h = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        graphed_first, graphed_second = torch.cuda.make_graphed_callables(
            (first, second), ((sample_x,), (sample_h,))
        )
    for _ in range(3):
        for module in (first, second, eager_first, eager_second):
            module.zero_grad(set_to_none=True)
        x = torch.randn(4, 8, device=DEVICE, requires_grad=True)
        x_eager = x.detach().clone().requires_grad_()
        out = graphed_second(graphed_first(x))
        expected = eager_second(eager_first(x_eager))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out.pow(2).sum().backward()
        expected.pow(2).sum().backward()
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(x.grad, x_eager.grad)
        for module, eager in ((first, eager_first), (second, eager_second)):
            torch.testing.assert_close([p.grad for p in module.parameters()], [p.grad for p in eager.parameters()])


def test_random_ops_draw_fresh_numbers_at_each_replay():
    # CUDA graphs advance the generator's Philox offset at each replay. The emulation draws from
    # the device generator at replay time: after the same seed, a replay gives what the same ops
    # give eagerly.
    ones = torch.ones(64, device=DEVICE)
    graph, (noise, dropped) = _capture(
        lambda: (torch.rand(5, device=DEVICE), torch.nn.functional.dropout(ones, 0.5))
    )
    torch.cuda.manual_seed(7)
    graph.replay()
    first_noise, first_dropped = noise.clone(), dropped.clone()
    graph.replay()
    assert not torch.equal(first_noise, noise)
    torch.cuda.manual_seed(7)
    torch.testing.assert_close(first_noise, torch.rand(5, device=DEVICE))
    torch.testing.assert_close(first_dropped, torch.nn.functional.dropout(ones, 0.5))


@pytest.mark.parametrize(
    "host_read",
    [lambda x: x.sum().item(), lambda x: x.cpu(), lambda x: torch.nonzero(x)],
    ids=["item", "cpu", "nonzero"],
)
def test_reading_device_data_on_the_host_invalidates_the_capture(host_read):
    x = torch.ones(3, device=DEVICE)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="operation failed due to a previous error during capture") as info:
        with torch.cuda.graph(graph):
            host_read(x)
    # The first error, chained, is CUDA's refusal to sync during capture.
    assert "operation not permitted when stream is capturing" in str(info.value.__context__)
    assert torch.cuda.is_current_stream_capturing() is False
    # torch.cuda.graph's __exit__ does not leave its capture stream when capture_end raises (on a
    # GPU too): put the default stream back for what follows.
    torch.cuda.set_stream(torch.cuda.default_stream())
    graph, y = _capture(lambda: x * 3)  # capturing works again afterwards
    graph.replay()
    assert y.tolist() == [3.0, 3.0, 3.0]


def test_non_blocking_copy_to_pinned_host_memory_is_captured():
    x = torch.zeros(3, device=DEVICE)
    host = torch.empty(3, pin_memory=True)
    graph, _ = _capture(lambda: host.copy_(x.add_(1), non_blocking=True))
    graph.replay()
    graph.replay()
    assert host.tolist() == [2.0, 2.0, 2.0]


def test_misuse_raises_cudas_errors():
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="without a preceding successful capture"):
        graph.replay()
    with pytest.raises(RuntimeError, match="without a preceding successful capture"):
        graph.pool()
    with pytest.raises(RuntimeError, match="must be captured on a non-default stream"):
        graph.capture_begin()  # the current stream is the default stream
    x = torch.zeros(2, device=DEVICE)
    graph, _ = _capture(lambda: x + 1)
    with torch.cuda.stream(torch.cuda.Stream()):
        with pytest.raises(RuntimeError, match="already owns a captured graph"):
            graph.capture_begin()
    graph.reset()
    with pytest.raises(RuntimeError, match="without a preceding successful capture"):
        graph.replay()
    with pytest.raises(RuntimeError, match="cudaGraph_t"):
        graph.raw_cuda_graph()


def test_pools_and_debug_dump(tmp_path):
    first, second = torch.cuda.graph_pool_handle(), torch.cuda.graph_pool_handle()
    assert first != second
    x = torch.ones(2, device=DEVICE)
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph, pool=first):
        y = (x + 1).exp()
    assert graph.pool() == first
    shared = torch.cuda.CUDAGraph()
    with torch.cuda.graph(shared, pool=graph.pool()):
        z = y * 2
    graph.replay()  # keep_graph=True: instantiated on first replay
    shared.replay()
    torch.testing.assert_close(z, (x + 1).exp() * 2)
    path = tmp_path / "graph.dot"
    graph.debug_dump(str(path))
    dump = path.read_text()
    assert dump.startswith("digraph") and "aten.add.Tensor" in dump and "aten.exp.default" in dump


def test_empty_capture_warns_as_cuda_does():
    graph = torch.cuda.CUDAGraph()
    with pytest.warns(UserWarning, match="The CUDA Graph is empty"):
        with torch.cuda.graph(graph):
            pass


def test_lifecycle_hooks_fire_where_a_gpu_fires_them():
    # torch 2.14's CUDAGraph hooks; the emulated graph has them on every torch release.
    events = []
    x = torch.ones(3, device=DEVICE)
    graph = torch.cuda.CUDAGraph()
    graph.register_capture_start_hook(lambda g: events.append(("capture_start", torch.cuda.is_current_stream_capturing())))
    graph.register_capture_end_hook(lambda g: events.append(("capture_end", len(g._ops))))
    graph.register_post_instantiate_hook(lambda g: events.append(("instantiate", g._has_graph_exec)))
    start = graph.register_replay_start_hook(lambda g: events.append(("replay_start",)))
    graph.register_replay_end_hook(lambda g: events.append(("replay_end", float(y.sum()))))
    graph.register_destroy_callback(lambda: events.append(("destroyed",)))
    graph.retain_object(x)
    with torch.cuda.graph(graph):
        y = x * 2
    assert events == [("capture_start", True), ("capture_end", 1), ("instantiate", True)]
    x.fill_(5.0)
    graph.replay()
    assert events[3:] == [("replay_start",), ("replay_end", 30.0)]
    start.remove()
    graph.replay()
    assert events[5:] == [("replay_end", 30.0)]
    graph.reset()  # this capture cycle ends: its destroy callbacks fire, once
    assert events[6:] == [("destroyed",)]
    del graph
    assert events[6:] == [("destroyed",)]


def test_destroy_callbacks_fire_when_the_graph_is_collected():
    fired = []
    graph, _ = _capture(lambda: torch.ones(2, device=DEVICE) + 1)
    graph.register_destroy_callback(lambda: fired.append(True))
    del graph
    assert fired == [True]


@pytest.mark.skipif(not hasattr(torch.cuda.graphs, "register_graph_destroy_hook"), reason="torch < 2.14")
def test_graph_destroy_hooks_run_when_a_graph_is_destroyed():
    destroyed = []
    handle = torch.cuda.graphs.register_graph_destroy_hook(destroyed.append)
    try:
        graph, _ = _capture(lambda: torch.ones(2, device=DEVICE) + 1)
        graph.replay()
        del graph
        assert destroyed == [set()]  # no exec graph ids: an emulated graph has none
        graph, _ = _capture(lambda: torch.ones(2, device=DEVICE) * 2)
        graph.reset()
        assert destroyed == [set(), set()]
    finally:
        handle.remove()
    del graph
    assert len(destroyed) == 2


@pytest.mark.skipif(not hasattr(torch.cuda.graphs, "register_graph_capture_end_hook"), reason="torch < 2.14")
def test_module_level_graph_hooks_see_every_graph():
    seen = []
    handles = [
        torch.cuda.graphs.register_graph_capture_start_hook(lambda g: seen.append("capture_start")),
        torch.cuda.graphs.register_graph_capture_end_hook(lambda g: seen.append("capture_end")),
        torch.cuda.graphs.register_graph_instantiate_hook(lambda g: seen.append("instantiate")),
        torch.cuda.graphs.register_graph_replay_start_hook(lambda g: seen.append("replay_start")),
        torch.cuda.graphs.register_graph_replay_end_hook(lambda g: 1 / 0),  # errors are swallowed
    ]
    try:
        graph, _ = _capture(lambda: torch.ones(2, device=DEVICE) + 1)
        graph.replay()
    finally:
        for handle in handles:
            handle.remove()
    assert seen == ["capture_start", "capture_end", "instantiate", "replay_start"]


@pytest.mark.skipif(not hasattr(torch.cuda, "export_dot"), reason="torch < 2.14")
def test_export_dot_writes_the_captured_ops_and_graph_data_is_not_emulated(tmp_path):
    x = torch.ones(2, device=DEVICE)
    graph = torch.cuda.CUDAGraph()  # keep_graph=False: the dump happens in the capture-end hook
    graph.register_capture_end_hook(torch.cuda.export_dot(str(tmp_path / "graph.dot")))
    with torch.cuda.graph(graph):
        (x + 1).exp()
    dump = (tmp_path / "graph.dot").read_text()
    assert dump.startswith("digraph") and "aten.add.Tensor" in dump and "float32[2]" in dump
    with pytest.warns(UserWarning, match="debug not enabled"):  # the template is gone, as on a GPU
        graph.debug_dump(str(tmp_path / "late.dot"))
    # get_graph_data lists a cudaGraph_t's nodes by CUPTI tools ids, which an emulated graph lacks.
    other = torch.cuda.CUDAGraph()
    other.register_post_instantiate_hook(torch.cuda.export_graph_data(str(tmp_path / "graph.pkl")))
    with torch.cuda.stream(torch.cuda.Stream()):  # (torch.cuda.graph would leave its stream current)
        other.capture_begin()
        x * 2
        with pytest.raises(RuntimeError, match="CUPTI tools ids"):
            other.capture_end()  # instantiate runs the hook


def test_patches_are_registered_under_ops_graphs():
    from torchdevice.core.patch import REGISTRY

    owned = {p.qualname for p in REGISTRY if p.owner == "ops.graphs"}
    assert {"torch.cuda.CUDAGraph", "torch._C._cuda_isCurrentStreamCapturing", "torch._C._graph_pool_handle"} <= owned
    assert torch.cuda.CUDAGraph is torch.cuda.graphs.CUDAGraph
