"""torch.compile with its default backend (inductor) on the emulated GPU.

Inductor compiles emulated ``cuda`` graphs with its C++/OpenMP backend: the tests check that
generated C++ kernels really run (not eager), that results and gradients match eager, and that
what inductor cannot do on this device degrades instead of failing. Compilation is slow on small
machines, so the models are small and each test compiles once.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch._inductor import metrics
from torch._inductor.utils import run_and_get_code

from torchdevice.utils import compile as td_compile

DEVICE = "cuda"

# Inductor warns, as on an sm_80 GPU, that TF32 matmuls are available but not enabled.
pytestmark = pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning")


@pytest.fixture(autouse=True)
def fresh_compilation():
    # Without inductor's on-disk caches, every test generates its code (a rerun of the suite
    # would otherwise load compiled graphs and generate nothing).
    torch._dynamo.reset()
    metrics.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(
        enable_autograd_cache=False
    ):
        yield
    torch._dynamo.reset()


def _assert_grads_match(model, reference, **tolerance):
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


def test_mlp_runs_generated_cpp_kernels_and_matches_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).to(DEVICE)
    reference = copy.deepcopy(model)
    x = torch.randn(4, 16, device=DEVICE)
    compiled = torch.compile(model)

    out, sources = run_and_get_code(compiled, x)
    out.square().mean().backward()
    expected = reference(x)
    expected.square().mean().backward()

    assert out.device == torch.device(DEVICE, 0) and out.is_cuda
    torch.testing.assert_close(out, expected)
    _assert_grads_match(model, reference)
    # Forward and backward modules: inductor's C++ kernels, called on the cuda tensors.
    assert len(sources) == 2
    for source in sources:
        assert "async_compile.cpp_pybinding" in source and "cpp_fused_" in source
        assert "triton" not in source and "get_raw_stream" not in source
        assert "device='cuda:0'" in source


def test_transformer_encoder_matches_eager():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).to(DEVICE)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 10, 64, device=DEVICE)

    out = torch.compile(model)(x)
    out.sum().backward()
    expected = reference(x)
    expected.sum().backward()

    assert out.is_cuda
    assert metrics.generated_kernel_count > 0  # inductor generated (C++) kernels for it
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    _assert_grads_match(model, reference, rtol=1e-4, atol=1e-4)


def test_dynamic_shapes_compile_once_for_all_sizes():
    def fn(a, b):
        return torch.nn.functional.silu(a * b).sum(-1)

    compiled = torch.compile(fn, dynamic=True)
    a, b = torch.randn(3, 5, device=DEVICE), torch.randn(3, 5, device=DEVICE)
    out, (source,) = run_and_get_code(compiled, a, b)
    torch.testing.assert_close(out, fn(a, b))
    # The C++ kernel takes the sizes as arguments (symbolic shapes), not as constants.
    assert "const int64_t ks0" in source
    kernels = metrics.generated_kernel_count
    for n in (7, 11):
        a, b = torch.randn(n, 5, device=DEVICE), torch.randn(n, 5, device=DEVICE)
        torch.testing.assert_close(compiled(a, b), fn(a, b))
    assert metrics.generated_kernel_count == kernels  # no recompilation for the new sizes


def test_reduce_overhead_runs_without_cuda_graphs(caplog, monkeypatch):
    monkeypatch.setattr(td_compile, "_cudagraphs_notice_logged", False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(DEVICE)
    compiled = torch.compile(model, mode="reduce-overhead")
    with caplog.at_level(logging.DEBUG, logger="torchdevice"):
        for _ in range(3):
            x = torch.randn(3, 8, device=DEVICE)
            torch.testing.assert_close(compiled(x), model(x))
    notices = [r for r in caplog.records if r.name == "torchdevice" and "CUDA graphs" in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.DEBUG
    assert metrics.generated_kernel_count > 0


def test_graph_inductor_cannot_compile_runs_eagerly_with_one_warning(caplog):
    # The C++ wrapper (cpp_wrapper=True) has no emulated-device version: inductor refuses the
    # device, and the graph runs eagerly instead of failing the program.
    def fn(x):
        return torch.sin(x) * 2 + 1

    x = torch.randn(8, device=DEVICE)
    with torch._inductor.config.patch(cpp_wrapper=True), caplog.at_level(logging.WARNING, logger="torchdevice"):
        out = torch.compile(fn)(x)
    torch.testing.assert_close(out, fn(x))
    warnings = [r for r in caplog.records if r.name == "torchdevice" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "runs eagerly" in warnings[0].getMessage() and "Device cuda not supported" in warnings[0].getMessage()


def test_import_stays_lazy_and_patches_are_registered(run_code):
    proc = run_code(
        """
        import importlib.util, sys
        import torchdevice, torch
        print(any(name.startswith(("torch._inductor", "torch._dynamo")) for name in sys.modules))
        from torch.utils._triton import has_triton
        before = has_triton()
        x = torch.ones(4, device="cuda")
        print(torch.compile(lambda t: t.cos() + 1)(x).device)
        from torchdevice.core.patch import REGISTRY
        print(sorted({p.qualname for p in REGISTRY if p.owner == "utils.compile"}))
        print(before, has_triton(), importlib.util.find_spec("triton") is not None)
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "False"  # import torchdevice did not import inductor or dynamo
    assert lines[1] == "cuda:0"
    assert lines[2] == str(
        sorted(
            [
                "torch._inductor.compile_fx.compile_fx",
                "torch._inductor.utils.GPU_TYPES",
                "torch._inductor.ir.is_cpu",
                "BaseSchedulerNode.is_cpu",
            ]
        )
    )
    # One answer for the whole process, a compilation or not: Triton is usable wherever it is
    # installed (its kernels run on the interpreter, utils/triton_kernels.py), as on a GPU.
    before, after, installed = lines[3].split()
    assert before == after == installed


def test_torchvision_deterministic_roi_align_backward_equals_cpu_after_a_compile():
    # torchvision takes its compiled Python roi_align when deterministic algorithms are on and
    # torch.compile supports the device (has_triton() for cuda); a changing answer sent the
    # second call to the C++ op, whose CUDA backward has no deterministic implementation.
    torchvision = pytest.importorskip("torchvision", reason="torchvision is installed beside torch 2.14.1 only")
    from torchvision.ops import roi_align

    torch.compile(lambda t: t.sin() + 1)(torch.ones(4, device=DEVICE))
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0, 1.0, 1.0, 9.0, 12.0], [1, 2.0, 0.5, 15.0, 7.0]])
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for device in ("cpu", DEVICE, DEVICE):
            x = image.to(device).detach().requires_grad_()
            roi_align(x, boxes.to(device), (4, 4), 0.5, 2, aligned=True).square().sum().backward()
            grads.append(x.grad.cpu())
    finally:
        torch.use_deterministic_algorithms(previous)
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])


def test_compiled_graphs_inside_a_cuda_graph_capture_replay_correctly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(DEVICE)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model)
    x = torch.randn(3, 8, device=DEVICE)
    compiled(x).sum().backward()  # compile forward and backward outside the capture
    model.zero_grad(set_to_none=True)

    out = compiled(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        # The compiled backward's C++ kernels are launched through torchdevice's launcher, so
        # the capture records them with the graph's other ops instead of running them now.
        out.sum().backward()
    assert any(op.name.startswith("cpp_fused_") for op in graph._ops)
    graph.replay()
    reference(x).sum().backward()
    _assert_grads_match(model, reference)

    # A compiled module called during a capture (dynamo runs it eagerly under the capture's
    # dispatch mode) is recorded op by op and replays on new inputs too.
    static_x = torch.randn(3, 8, device=DEVICE)
    forward = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(forward):
        static_y = compiled(static_x)
    new_x = torch.randn(3, 8, device=DEVICE)
    static_x.copy_(new_x)
    forward.replay()
    torch.testing.assert_close(static_y, reference(new_x).detach())


class _CausalBlock(torch.nn.Module):
    """A GPT block (SDPA attention, GELU MLP, pre-norm) as CUDA training scripts write it."""

    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(c, 2))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_training_step_compiles_and_matches_eager(dtype, caplog):
    # autocast("cuda") + GradScaler (fp16), as nanoGPT trains: the graphs compile to C++ kernels
    # (no eager fallback warning) and the step equals the eager step within half precision.
    torch.manual_seed(0)
    model = torch.nn.Sequential(_CausalBlock(), torch.nn.Linear(32, 16)).to(DEVICE)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 8, 32, device=DEVICE)
    target = torch.randint(0, 16, (2, 8), device=DEVICE)

    def step(module):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, fused=True)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        losses = []
        for _ in range(2):
            with torch.autocast("cuda", dtype=dtype):
                loss = torch.nn.functional.cross_entropy(module(x).flatten(0, 1), target.flatten())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            losses.append(loss.detach())
        return torch.stack(losses)

    with caplog.at_level(logging.WARNING, logger="torchdevice"):
        compiled_losses = step(torch.compile(model))
    assert not [r for r in caplog.records if r.name == "torchdevice"], caplog.text
    assert metrics.generated_kernel_count > 0
    eager_losses = step(reference)
    assert compiled_losses.is_cuda
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=2e-2, atol=2e-2)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-2)
