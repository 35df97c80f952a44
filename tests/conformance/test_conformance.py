"""The full conformance sweep as pytest cases (the same figures: `python tests/conformance/run.py`).

Every OpInfo op (float32 and one integer dtype), every ModuleInfo module (forward + backward)
and every OptimizerInfo optimizer with each implementation: emulated cuda must equal native CPU
bit for bit. The whole sweep takes about two minutes here, so CI runs all of it.
"""

from __future__ import annotations

import pytest
import torch

from tests.conformance import harness

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")

KNOWN = harness.load_known_differences()


def _check(result: harness.Result) -> None:
    if not result.ok and result.case in KNOWN:
        pytest.xfail(f"known difference: {KNOWN[result.case]}")
    assert result.ok, f"{result.case}: {result.identical}/{result.samples} identical; first: {result.failures[:3]}"


def _op_id(v) -> str:
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return v.name + (f".{v.variant_test_name}" if v.variant_test_name else "")


@pytest.mark.parametrize("op,dtype", list(harness.opinfo_cases()), ids=_op_id)
def test_opinfo(op, dtype):
    _check(harness.run_opinfo(op, dtype))


@pytest.mark.parametrize("module_info", list(harness.moduleinfo_cases()), ids=lambda m: m.name)
def test_moduleinfo(module_info):
    _check(harness.run_moduleinfo(module_info))


@pytest.mark.parametrize(
    "optim_info,impl", list(harness.optiminfo_cases()), ids=lambda v: getattr(getattr(v, "optim_cls", None), "__name__", str(v))
)
def test_optiminfo(optim_info, impl):
    _check(harness.run_optiminfo(optim_info, impl))
