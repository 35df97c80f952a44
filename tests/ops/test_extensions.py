"""Libraries loaded after activation (ops/extensions.py): their CUDA kernels never run.

Each case runs in a fresh interpreter: a library is loaded once per process, and the import
order is the point. The custom-op library is the project's own (csrc/tests/custom_op_library.cpp,
built beside the C++ tests): its CUDA kernels fail loudly if they ever run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / "build" / f"torch-{torch.__version__.split('+')[0]}"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(
    not HAS_TORCHVISION, reason="torchvision is installed beside torch 2.14.1 only (scripts/setup_env.sh)"
)


def custom_op_library() -> Path:
    found = sorted(BUILD_DIR.glob("torchdevice_test_ops*.so"))
    assert found, f"no torchdevice_test_ops library in {BUILD_DIR}: build with scripts/setup_env.sh"
    return found[0]


def run(code: str, *args: str, launcher: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDEVICE") and k != "TORCH_DEVICE_BACKEND"}
    env["TORCH_DEVICE_BACKEND"] = "cpu"
    source = textwrap.dedent(code)
    if launcher:
        script = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"torchdevice_ext_{os.getpid()}_{abs(hash(code))}.py"
        script.write_text(source)
        cmd = [sys.executable, "-m", "torchdevice", "run", str(script), *args]
    else:
        cmd = [sys.executable, "-c", source, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


CUSTOM_OPS_CHECK = """
x = torch.arange(6.0).reshape(2, 3)
y = torch.ops.torchdevice_test.scale(x.cuda(), 2.5)
assert y.device.type == "cuda", y.device
assert torch.equal(y.cpu(), torch.ops.torchdevice_test.scale(x, 2.5))
try:
    torch.ops.torchdevice_test.cuda_only(x.cuda())
except NotImplementedError as e:  # no CPU kernel: the emulated route says so
    assert "CUDA kernel ran" not in str(e), e
else:
    raise AssertionError("cuda_only ran")
print("ok")
"""


@pytest.mark.parametrize(
    "load",
    [
        "import torchdevice, torch\ntorch.ops.load_library(sys.argv[1])",
        # The extension-module door: import of a built module (what cpp_extension.load does).
        "import torchdevice, torch\nsys.path.insert(0, os.path.dirname(sys.argv[1]))\nimport torchdevice_test_ops",
        # Loaded before torchdevice: replaced at activation.
        "import torch\ntorch.ops.load_library(sys.argv[1])\nimport torchdevice",
    ],
    ids=["load_library_after", "import_after", "loaded_before"],
)
def test_custom_op_library_cuda_kernels_never_run(load):
    out = run("import os, sys\n" + load + "\n" + CUSTOM_OPS_CHECK, str(custom_op_library()))
    assert out.strip().endswith("ok")


def test_custom_op_library_with_the_launcher():
    code = "import sys, torch\ntorch.ops.load_library(sys.argv[1])\n" + CUSTOM_OPS_CHECK
    assert run(code, str(custom_op_library()), launcher=True).strip().endswith("ok")


def test_python_registered_cuda_kernels_are_kept():
    # A kernel registered from Python for "cuda" is written in torch ops, which run emulated: it
    # is the user's, and stays, even when a library is loaded after it.
    out = run(
        """
        import os, sys
        import torchdevice, torch

        @torch.library.custom_op("td_user::double", mutates_args=())
        def double(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @double.register_kernel("cuda")
        def _(x):
            return x * 2 + 100  # visibly the cuda kernel

        torch.ops.load_library(sys.argv[1])
        print(double(torch.ones(2, device="cuda")).tolist())
        """,
        str(custom_op_library()),
    )
    assert out.strip() == "[102.0, 102.0]"


TORCHVISION_OPS = """
from torchvision import ops
torch.manual_seed(0)
boxes = torch.rand(40, 4) * 50
boxes[:, 2:] += boxes[:, :2]
scores, classes = torch.rand(40), torch.randint(0, 3, (40,))
x = torch.rand(2, 4, 12, 12)
rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0], [1, 2.0, 3.0, 11.0, 10.0]])

def results(device):
    out = {
        "nms": ops.nms(boxes.to(device), scores.to(device), 0.5),
        "batched_nms": ops.batched_nms(boxes.to(device), scores.to(device), classes.to(device), 0.5),
    }
    layers = {
        "roi_align": lambda t: ops.roi_align(t, rois.to(device), (3, 3), 0.5, 2, aligned=True),
        "roi_pool": lambda t: ops.roi_pool(t, rois.to(device), (3, 3), 0.5),
        "ps_roi_align": lambda t: ops.ps_roi_align(t, rois.to(device), (2, 2), 0.5, 2),
        "ps_roi_pool": lambda t: ops.ps_roi_pool(t, rois.to(device), (2, 2), 0.5),
        "deform_conv2d": lambda t: ops.deform_conv2d(
            t, torch.linspace(-1, 1, 2 * 18 * 10 * 10, device=device).reshape(2, 18, 10, 10),
            torch.linspace(-1, 1, 3 * 4 * 9, device=device).reshape(3, 4, 3, 3)),
    }
    for name, layer in layers.items():
        t = x.detach().clone().to(device).requires_grad_()
        y = layer(t)
        (y * torch.arange(y.numel(), device=device).reshape(y.shape)).sum().backward()
        out[name], out[name + ".grad"] = y, t.grad
    return out

cpu, cuda = results("cpu"), results("cuda")
for name in cpu:
    assert cuda[name].device.type == "cuda", name
    assert torch.equal(cuda[name].cpu(), cpu[name]), name
print("ok", len(cpu))
"""

ORDERS = {
    "torchdevice_first": "import torchdevice, torch, torchvision",
    "torchvision_first": "import torch, torchvision, torchdevice",
    # `python -m torchdevice run script.py`: the script itself never names torchdevice.
    "launcher": "import torch, torchvision",
}


def run_in(order: str, code: str) -> str:
    return run(ORDERS[order] + "\n" + code, launcher=order == "launcher")


@needs_torchvision
@pytest.mark.parametrize("order", ORDERS)
def test_torchvision_ops_forward_and_backward_equal_cpu(order):
    assert run_in(order, TORCHVISION_OPS).split() == ["ok", "12"]


DETECTION_STEPS = """
import torchvision
from torchvision.models import detection
from torchvision.models.detection.transform import GeneralizedRCNNTransform

# Training picks a size from min_size with a CPU-generator draw, while the samplers draw from the
# device's generator: on cuda (a GPU's too) the two streams are apart, on the CPU they are one.
# One size and no draw keep every draw on the device's generator in both runs.
GeneralizedRCNNTransform.torch_choice = lambda self, k: k[0]

def steps(builder, device):
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=128).to(device)
    images = [torch.rand(3, 96, 112).to(device), torch.rand(3, 100, 96).to(device)]
    targets = []
    for i in range(2):
        target = {"boxes": torch.tensor([[5.0, 6.0, 60.0, 70.0], [20.0, 10.0, 90.0, 80.0]], device=device),
                  "labels": torch.tensor([1, 2], device=device)}
        if builder is detection.maskrcnn_resnet50_fpn:
            masks = torch.zeros(2, images[i].shape[1], images[i].shape[2], dtype=torch.uint8, device=device)
            masks[:, 10:60, 8:50] = 1
            target["masks"] = masks
        targets.append(target)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # The samplers draw (randperm) from the device's generator: the same seed on both.
    torch.manual_seed(1)
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    return {k: v.detach() for k, v in losses.items()}, detections

for builder in (detection.fasterrcnn_mobilenet_v3_large_fpn, detection.maskrcnn_resnet50_fpn):
    cpu_losses, cpu_det = steps(builder, "cpu")
    cuda_losses, cuda_det = steps(builder, "cuda")
    for k in cpu_losses:
        assert cuda_losses[k].is_cuda and torch.equal(cuda_losses[k].cpu(), cpu_losses[k]), (builder.__name__, k)
    for c, g in zip(cpu_det, cuda_det):
        for k in c:
            assert g[k].is_cuda and torch.equal(g[k].cpu(), c[k]), (builder.__name__, k)
    print(builder.__name__, "ok")
"""


@needs_torchvision
@pytest.mark.parametrize("order", ORDERS)
def test_detection_models_train_and_eval_steps_equal_cpu(order):
    out = run_in(order, DETECTION_STEPS)
    assert out.split() == ["fasterrcnn_mobilenet_v3_large_fpn", "ok", "maskrcnn_resnet50_fpn", "ok"]


JPEG_CODEC = """
from torchvision.io import decode_jpeg, encode_jpeg, ImageReadMode
from torchvision.transforms import v2
torch.manual_seed(0)
image = (torch.rand(3, 24, 40) * 255).to(torch.uint8)
data = encode_jpeg(image, quality=90)

decoded = decode_jpeg(data, device="cuda")
assert decoded.device == torch.device("cuda", 0) and torch.equal(decoded.cpu(), decode_jpeg(data))
gray = decode_jpeg([data, data], mode=ImageReadMode.GRAY, device="cuda")
assert all(g.is_cuda and torch.equal(g.cpu(), decode_jpeg(data, mode=ImageReadMode.GRAY)) for g in gray)

encoded = encode_jpeg(image.cuda(), quality=90)
assert encoded.is_cuda and torch.equal(encoded.cpu(), data)
assert all(e.is_cuda for e in encode_jpeg([image.cuda(), image.cuda()]))
try:
    encode_jpeg(image[:1].cuda())
except RuntimeError as e:
    assert "The number of channels should be 3, got: 1" in str(e), e
else:
    raise AssertionError("nvJPEG encodes only 3 channels")
# As on a GPU: the cuda encoder's bitstream is on cuda, which decode_jpeg refuses.
try:
    v2.JPEG(quality=50)(image.cuda())
except ValueError as e:
    assert "Input tensor must be a CPU tensor" in str(e)
else:
    raise AssertionError("v2.JPEG on cuda")
print("ok")
"""


@needs_torchvision
@pytest.mark.parametrize("order", ORDERS)
def test_jpeg_decode_and_encode_on_cuda_give_the_cpu_codecs_result(order):
    assert run_in(order, JPEG_CODEC).strip().endswith("ok")


def test_a_library_loaded_with_ctypes_is_watched_too():
    out = run("import sys, ctypes\nimport torchdevice, torch\nctypes.CDLL(sys.argv[1])\n" + CUSTOM_OPS_CHECK,
              str(custom_op_library()))
    assert out.strip().endswith("ok")


def test_loading_a_library_leaves_other_cuda_kernels_and_the_patch_registry_alone():
    out = run(
        """
        import sys
        import torchdevice, torch
        from torchdevice.core.patch import REGISTRY
        before = torch._C._dispatch_dump("aten::add.Tensor")
        torch.ops.load_library(sys.argv[1])
        assert torch._C._dispatch_dump("aten::add.Tensor") == before
        names = {p.qualname for p in REGISTRY if p.owner == "ops.extensions"}
        assert {"CDLL.__init__", "ExtensionFileLoader.create_module"} <= names, names
        print("ok")
        """,
        str(custom_op_library()),
    )
    assert out.strip() == "ok"
