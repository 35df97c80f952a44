"""The CI subset of the conformance sweep (the full sweep: `python tests/conformance/run.py`).

A fixed, representative list of OpInfo ops (pointwise, reductions, linalg, views, indexing,
in-place/out=, random, nn.functional), every ModuleInfo module and every OptimizerInfo
optimizer with each of its implementations: emulated cuda must equal CPU bit for bit.
"""

from __future__ import annotations

import pytest

from tests.conformance import harness

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")

CI_OPS = sorted({
    # pointwise, binary, comparison, type promotion
    "add", "sub", "mul", "div", "pow", "exp", "log", "sigmoid", "tanh", "abs", "clamp", "where", "eq", "lt",
    "maximum", "lerp", "addcmul", "addcdiv", "nan_to_num", "sgn", "float_power",
    # reductions
    "sum", "mean", "prod", "amax", "argmax", "var", "std", "norm", "logsumexp", "cumsum", "max.reduction_with_dim",
    # matmul / linalg
    "mm", "bmm", "addmm", "matmul", "linalg.solve", "linalg.svd", "linalg.qr", "linalg.cholesky", "einsum",
    # views, shapes, copies
    "view", "reshape", "transpose", "permute", "expand", "as_strided", "narrow", "unfold", "cat", "stack",
    "split", "chunk", "flip", "roll", "contiguous", "clone", "to", "resize_", "resize_as_", "squeeze", "t",
    # indexing / scatter
    "index_select", "index_add", "index_put", "gather", "scatter", "scatter_add", "masked_fill",
    "masked_select", "nonzero", "take", "__getitem__", "__setitem__", "sort", "topk", "unique",
    # factories
    "arange", "linspace", "full", "zeros_like", "eye", "tril", "triu",
    # random (same seed -> same values)
    "bernoulli", "normal", "uniform", "multinomial", "randn_like", "rand_like", "randint_like",
    "nn.functional.dropout",
    # nn.functional
    "nn.functional.linear", "nn.functional.conv2d", "nn.functional.conv_transpose2d", "nn.functional.relu",
    "nn.functional.gelu", "nn.functional.softmax", "nn.functional.log_softmax", "nn.functional.layer_norm",
    "nn.functional.group_norm", "nn.functional.batch_norm", "nn.functional.embedding",
    "nn.functional.cross_entropy", "nn.functional.mse_loss", "nn.functional.max_pool2d",
    "nn.functional.avg_pool2d", "nn.functional.interpolate", "nn.functional.pad",
    "nn.functional.scaled_dot_product_attention", "nn.functional.ctc_loss",
    # fft, complex
    "fft.fft", "fft.rfft", "view_as_real",
})

KNOWN = harness.load_known_differences()


def _check(result: harness.Result) -> None:
    if result.case in KNOWN:
        pytest.xfail(f"known difference: {KNOWN[result.case]}")
    assert result.samples > 0 or not result.failures, result.failures
    assert result.ok, f"{result.case}: {result.identical}/{result.samples} identical; first: {result.failures[:3]}"


@pytest.mark.parametrize(
    "op,dtype", list(harness.opinfo_cases(set(CI_OPS))), ids=lambda v: getattr(v, "name", str(v)).replace("torch.", "")
)
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


def test_ci_subset_covers_real_ops():
    from torch.testing._internal.common_methods_invocations import op_db

    names = {op.name for op in op_db} | {f"{op.name}.{op.variant_test_name}" for op in op_db if op.variant_test_name}
    assert sorted(set(CI_OPS) - names) == []
