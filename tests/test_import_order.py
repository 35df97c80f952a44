"""``import torchdevice`` works before and after ``import torch``, each in a fresh interpreter.

torch creates its CUDA hooks object once. Imported first, torchdevice registers its hooks in
torch's registry before that happens ("registry"); imported second, it has to replace the hooks
object torch already made ("vtable"). Without working hooks, backward and Generator('cuda') fail.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import describe, EARLY_HOOKS_ROUTE

CHECKS = """
import json
x = torch.randn(4, 3, device="cuda", requires_grad=True)
w = torch.randn(3, 2).cuda().requires_grad_()
loss = (x @ w).relu().sum()
loss.backward()
g = torch.Generator("cuda")
g.manual_seed(7)
a = torch.rand(3, device="cuda", generator=g)
g.manual_seed(7)
b = torch.rand(3, device="cuda", generator=g)
print(json.dumps({
    "hooks_route": torchdevice.activation["hooks_route"],
    "devices": sorted({str(t.device) for t in (x, w, loss, x.grad, w.grad, a)}),
    "is_cuda": all(t.is_cuda for t in (x, w, loss, x.grad, w.grad)),
    "grad_shapes": [list(x.grad.shape), list(w.grad.shape)],
    "grad_matches_cpu": torch.equal(x.grad.cpu(), (torch.ones(4, 2) * (x @ w).gt(0).cpu()) @ w.detach().cpu().T),
    "generator_device": str(g.device),
    "generator_repeats": torch.equal(a, b),
    "is_available": torch.cuda.is_available(),
}))
"""

ORDERS = {
    "torchdevice-first": ("import torchdevice\nimport torch\n", EARLY_HOOKS_ROUTE),
    "torch-first": ("import torch\nimport torchdevice\n", "vtable"),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_import_order(run_code, order):
    imports, route = ORDERS[order]
    proc = run_code(imports + CHECKS)
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {
        "hooks_route": route,
        "devices": ["cuda:0"],
        "is_cuda": True,
        "grad_shapes": [[4, 3], [3, 2]],
        "grad_matches_cpu": True,
        "generator_device": "cuda:0",
        "generator_repeats": True,
        "is_available": True,
    }
