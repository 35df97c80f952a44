"""Differential conformance against PyTorch's own test databases.

Each case runs the same inputs natively on CPU and on emulated cuda and demands identical
results: equal values (NaN-aware, bit for bit), dtype, shape and strides, outputs on cuda,
and identical gradients. Random ops run from the same seed on both sides (the emulated cuda
generator is seeded like the CPU one), so they must match too.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import traceback
from typing import Any, Callable, Iterable

import torch
import torch.utils._pytree as pytree

KNOWN_DIFFERENCES = pathlib.Path(__file__).with_name("known_differences.txt")
SEED = 1234
# The emulated device under test: cuda, or mps when the process emulates mps.
DEVICE = os.environ.get("TORCHDEVICE_EMULATE", "").strip().lower() or "cuda"


# Apple's MPS has no float64: on a Mac these samples cannot run at all, and emulated mps raises the
# same TypeError. They are counted apart ("unsupported"), not as identical or different.
MPS_NO_FLOAT64 = "Cannot convert a MPS Tensor to float64 dtype"


class Unsupported(Exception):
    """The sample cannot exist on the device under test (MPS's missing float64)."""


def _raise_if_unsupported(err: BaseException | None) -> None:
    if DEVICE == "mps" and isinstance(err, TypeError) and MPS_NO_FLOAT64 in str(err):
        raise Unsupported(str(err))


@dataclasses.dataclass
class Result:
    case: str  # e.g. "ops/add/float32"
    samples: int = 0
    identical: int = 0
    unsupported: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.samples == self.identical

    def tally(self, check: Callable[[], str | None]) -> None:
        """Run one sample's check and count it: identical, different, or unsupported on the device."""
        try:
            err = check()
        except Unsupported:
            self.unsupported += 1
            return
        self.samples += 1
        if err:
            self.failures.append(err)
        else:
            self.identical += 1


def load_known_differences() -> dict[str, str]:
    """case -> reason, from known_differences.txt ("case  # reason" lines; "[mps] case" lines
    apply only when mps is the device under test)."""
    known: dict[str, str] = {}
    if KNOWN_DIFFERENCES.exists():
        for line in KNOWN_DIFFERENCES.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            case, _, reason = line.partition("#")
            case = case.strip()
            if case.startswith("[mps]"):
                if DEVICE != "mps":
                    continue
                case = case[len("[mps]"):].strip()
            known[case] = reason.strip()
    return known


# --------------------------------------------------------------------------------------------
# Comparison

def to_device(tree: Any, device: str | None) -> Any:
    """Fresh copies of the tensors in `tree` (on `device`, or where they are if None), keeping
    strides, so a sample can be used more than once and in-place ops see identical inputs."""

    def move(x):
        if isinstance(x, torch.Tensor):
            target = x.device if device is None else device
            if x.layout == torch.strided and not x._is_zerotensor() and torch._debug_has_internal_overlap(x) == 0:
                y = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=target)
                y.copy_(x.detach())
            else:  # expanded (overlapping) or special tensors: a plain copy on both sides
                y = x.detach().to(target, copy=True)
            return y.requires_grad_(x.requires_grad)
        return x

    return pytree.tree_map(move, tree)


def same_inputs(a: Any, b: Any) -> bool:
    """True when two samples hold the same values (devices may differ)."""
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if compare_tensors(x, y, "", allow_cpu=True) is not None:
                return False
        elif not isinstance(x, (str, torch.device)) and x != y and not (x != x and y != y):
            return False
    return True


def _strides_defined(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and t.numel() > 1


def compare_tensors(expected: torch.Tensor, actual: torch.Tensor, what: str, allow_cpu: bool = False) -> str | None:
    if actual.device.type != DEVICE and not allow_cpu:
        return f"{what}: on {actual.device}, expected {DEVICE}"
    if expected.dtype != actual.dtype:
        return f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.shape != actual.shape:
        return f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.layout != actual.layout:
        return f"{what}: layout {actual.layout} != {expected.layout}"
    if _strides_defined(expected) and expected.stride() != actual.stride():
        return f"{what}: strides {actual.stride()} != {expected.stride()}"
    a = actual.detach().cpu()
    e = expected.detach().cpu()
    if e.layout != torch.strided:
        e, a = e.to_dense(), a.to_dense()
    if e.is_quantized:
        e, a = e.dequantize(), a.dequantize()
    if e.is_conj():
        e = e.resolve_conj()
    if a.is_conj():
        a = a.resolve_conj()
    if e.is_neg():
        e = e.resolve_neg()
    if a.is_neg():
        a = a.resolve_neg()
    if e.dtype.is_floating_point or e.dtype.is_complex:
        same = (e == a) | (e.isnan() & a.isnan())
        if e.dtype.is_floating_point and e.numel():
            # Bit-for-bit: +0.0 and -0.0 compare equal, so check the sign bit too.
            same &= (torch.signbit(e) == torch.signbit(a)) | (e.isnan() & a.isnan())
        if not bool(same.all()):
            diff = (e.double() - a.double()).abs() if not e.dtype.is_complex else (e - a).abs()
            diff = diff[~same] if diff.dim() else diff
            return f"{what}: values differ (max abs diff {float(diff.max()) if diff.numel() else 'n/a'})"
    elif not torch.equal(e, a):
        return f"{what}: values differ"
    return None


def compare_trees(expected: Any, actual: Any, what: str, allow_cpu: bool = False) -> str | None:
    e_leaves, e_spec = pytree.tree_flatten(expected)
    a_leaves, a_spec = pytree.tree_flatten(actual)
    if len(e_leaves) != len(a_leaves):
        return f"{what}: {len(a_leaves)} outputs != {len(e_leaves)}"
    for i, (e, a) in enumerate(zip(e_leaves, a_leaves)):
        if isinstance(e, torch.Tensor) != isinstance(a, torch.Tensor):
            return f"{what}[{i}]: {type(a).__name__} != {type(e).__name__}"
        if isinstance(e, torch.Tensor):
            err = compare_tensors(e, a, f"{what}[{i}]", allow_cpu or e.device.type != "cpu")
            if err:
                return err
        elif isinstance(e, float) and e != e:
            if not (isinstance(a, float) and a != a):
                return f"{what}[{i}]: {a!r} != nan"
        elif isinstance(e, torch.device):
            continue
        elif e != a:
            return f"{what}[{i}]: {a!r} != {e!r}"
    return None


def _metadata(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    return (t.device.type.replace(DEVICE, "cpu"), t.dtype, tuple(t.shape), t.stride() if t.layout == torch.strided else None)


def _compare_plain(fn, args_cpu, args_cuda, what: str) -> str | None:
    out_cpu, out_cuda, err_cpu, err_cuda = run_both(lambda: fn(args_cpu[0], *args_cpu[1], **args_cpu[2]),
                                                    lambda: fn(args_cuda[0], *args_cuda[1], **args_cuda[2]))
    err = check_errors(err_cpu, err_cuda, what)
    if err or err_cpu is not None:
        return err
    return None if out_cpu == out_cuda else f"{what}: metadata {out_cuda} != {out_cpu}"


def seeded(fn: Callable[[], Any]) -> Any:
    torch.manual_seed(SEED)  # seeds the emulated device's generators too, as on a GPU or a Mac
    return fn()


def run_both(fn_cpu: Callable[[], Any], fn_cuda: Callable[[], Any]) -> tuple[Any, Any, BaseException | None, BaseException | None]:
    out_cpu = out_cuda = err_cpu = err_cuda = None
    try:
        out_cpu = seeded(fn_cpu)
    except Exception as e:  # noqa: BLE001 - any CPU error must be mirrored on cuda
        err_cpu = e
    try:
        out_cuda = seeded(fn_cuda)
    except Exception as e:  # noqa: BLE001
        err_cuda = e
    return out_cpu, out_cuda, err_cpu, err_cuda


def check_errors(err_cpu, err_cuda, what: str) -> str | None:
    if err_cpu is None:
        _raise_if_unsupported(err_cuda)
    if err_cpu is None and err_cuda is None:
        return None
    if err_cpu is not None and err_cuda is not None:
        return None  # both reject the input (messages may name the device)
    if err_cuda is not None:
        return f"{what}: {DEVICE} raised {type(err_cuda).__name__}: {str(err_cuda).splitlines()[0][:200]}"
    return f"{what}: cpu raised {type(err_cpu).__name__} but {DEVICE} did not"


def grads_of(inputs: Iterable[torch.Tensor]) -> list:
    return [t.grad for t in inputs]


def backward_and_grads(out: Any, leaves: list[torch.Tensor]) -> list:
    outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor) and o.requires_grad]
    if not outs:
        return []
    total = sum((o.float().sum() if not o.is_complex() else o.abs().sum()) for o in outs)
    return list(torch.autograd.grad(total, leaves, allow_unused=True))


# --------------------------------------------------------------------------------------------
# OpInfo

def _op_dtypes(op) -> list[torch.dtype]:
    supported = op.supported_dtypes("cpu")
    dtypes = [torch.float32] if torch.float32 in supported else []
    for d in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool):
        if d in supported:
            dtypes.append(d)
            break
    return dtypes


def run_opinfo(op, dtype: torch.dtype, max_samples: int | None = None) -> Result:
    name = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
    result = Result(f"ops/{name}/{str(dtype).replace('torch.', '')}")
    requires_grad = op.supports_autograd and (dtype.is_floating_point or dtype.is_complex)
    try:
        samples = seeded(lambda: list(op.sample_inputs("cpu", dtype, requires_grad=requires_grad)))
    except Exception as e:  # noqa: BLE001
        result.failures.append(f"sample generation failed: {e}")
        return result
    # Samples made for device "cuda" place each tensor where the op expects it (some arguments
    # must stay on the CPU); with both generators seeded alike their values match the CPU samples.
    try:
        cuda_samples = seeded(lambda: list(op.sample_inputs(DEVICE, dtype, requires_grad=requires_grad)))
    except Exception:  # noqa: BLE001
        cuda_samples = []
    if max_samples is not None:
        samples = samples[:max_samples]
    def check(i: int, sample, cuda_sample) -> str | None:
        cpu_args = (sample.input, sample.args, sample.kwargs)
        if cuda_sample is not None and same_inputs(cpu_args, (cuda_sample.input, cuda_sample.args, cuda_sample.kwargs)):
            cuda_args = to_device((cuda_sample.input, cuda_sample.args, cuda_sample.kwargs), None)
        else:
            try:
                cuda_args = to_device(cpu_args, DEVICE)
            except TypeError as e:
                _raise_if_unsupported(e)
                raise
            if "device" in cuda_args[2]:  # factory samples name their device
                cuda_args[2]["device"] = DEVICE
        return _check_op_sample(op, to_device(cpu_args, "cpu"), cuda_args, requires_grad, f"sample {i}")

    for i, sample in enumerate(samples):
        cuda_sample = cuda_samples[i] if i < len(cuda_samples) else None
        result.tally(lambda: check(i, sample, cuda_sample))
    return result


# Ops whose outputs are uninitialised memory: only their metadata is comparable.
UNINITIALIZED_OUTPUT_OPS = {"empty", "empty_like", "new_empty", "new_empty_strided", "empty_permuted", "empty_strided"}


def _check_op_sample(op, args_cpu, args_cuda, requires_grad: bool, what: str) -> str | None:
    if op.name in UNINITIALIZED_OUTPUT_OPS:
        op_cpu = lambda *a, **k: [_metadata(t) for t in pytree.tree_leaves(op(*a, **k))]  # noqa: E731
        return _compare_plain(op_cpu, args_cpu, args_cuda, what)
    out_cpu, out_cuda, err_cpu, err_cuda = run_both(
        lambda: op(args_cpu[0], *args_cpu[1], **args_cpu[2]),
        lambda: op(args_cuda[0], *args_cuda[1], **args_cuda[2]),
    )
    err = check_errors(err_cpu, err_cuda, what)
    if err or err_cpu is not None:
        return err
    # Ops told to produce CPU results (x.to('cpu'), device='cpu' arguments) do so on a GPU too.
    # So do factories given no device at all.
    leaves = pytree.tree_leaves(args_cuda)
    allow_cpu = any(isinstance(x, (str, torch.device)) and str(x).startswith("cpu") for x in leaves) or not any(
        (isinstance(x, torch.Tensor) and x.device.type == DEVICE) or (isinstance(x, (str, torch.device)) and str(x).startswith(DEVICE))
        for x in leaves
    )
    err = compare_trees(out_cpu, out_cuda, f"{what} output", allow_cpu)
    if err:
        return err
    # In-place ops mutate their inputs: those must match too (CPU arguments stay CPU).
    tensors = lambda tree: [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]  # noqa: E731
    err = compare_trees(tensors(args_cpu), tensors(args_cuda), f"{what} inputs after call", allow_cpu=True)
    if err:
        return err
    if requires_grad:
        leaves = lambda tree: [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.requires_grad and t.is_leaf]  # noqa: E731
        return compare_gradients(out_cpu, out_cuda, leaves(args_cpu), leaves(args_cuda), what)
    return None


def compare_gradients(out_cpu, out_cuda, leaves_cpu: list, leaves_cuda: list, what: str) -> str | None:
    """Backward from both outputs; the gradients of corresponding leaves must be identical."""
    if not leaves_cpu:
        return None
    g_cpu, g_cuda, e_cpu, e_cuda = run_both(
        lambda: backward_and_grads(out_cpu, leaves_cpu), lambda: backward_and_grads(out_cuda, leaves_cuda)
    )
    err = check_errors(e_cpu, e_cuda, f"{what} backward")
    if err or e_cpu is not None:
        return err
    return compare_trees(g_cpu, g_cuda, f"{what} grad")


def opinfo_cases(names: set[str] | None = None):
    from torch.testing._internal.common_methods_invocations import op_db

    for op in op_db:
        full = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        if names is not None and full not in names and op.name not in names:
            continue
        for dtype in _op_dtypes(op):
            yield op, dtype


# --------------------------------------------------------------------------------------------
# ModuleInfo

def run_moduleinfo(module_info, dtype: torch.dtype = torch.float32) -> Result:
    result = Result(f"modules/{module_info.name}/{str(dtype).replace('torch.', '')}")
    try:
        torch.manual_seed(SEED)
        inputs = module_info.module_inputs_func(module_info, device="cpu", dtype=dtype, requires_grad=True, training=True)
    except Exception as e:  # noqa: BLE001
        result.failures.append(f"input generation failed: {e}")
        return result
    for i, mi in enumerate(inputs):
        if mi.forward_input is None:
            continue
        try:
            torch.manual_seed(SEED)
            module_info.module_cls(*mi.constructor_input.args, **mi.constructor_input.kwargs)
        except Exception:  # noqa: BLE001 - inputs the module itself rejects test nothing here
            continue
        result.tally(lambda: _check_module_input(module_info, mi, dtype, f"input {i}"))
    return result


def _check_module_input(module_info, mi, dtype, what: str) -> str | None:
    torch.manual_seed(SEED)
    m_cpu = module_info.module_cls(*mi.constructor_input.args, **mi.constructor_input.kwargs).to(dtype)
    m_cuda = copy.deepcopy(m_cpu).to(DEVICE)
    fwd_cpu = to_device((mi.forward_input.args, mi.forward_input.kwargs), "cpu")
    fwd_cuda = to_device((mi.forward_input.args, mi.forward_input.kwargs), DEVICE)
    out_cpu, out_cuda, err_cpu, err_cuda = run_both(lambda: m_cpu(*fwd_cpu[0], **fwd_cpu[1]), lambda: m_cuda(*fwd_cuda[0], **fwd_cuda[1]))
    err = check_errors(err_cpu, err_cuda, what)
    if err or err_cpu is not None:
        return err
    err = compare_trees(out_cpu, out_cuda, f"{what} output")
    if err:
        return err
    def leaves(module, inputs):
        return [p for p in module.parameters() if p.requires_grad] + [
            t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.requires_grad
        ]

    return compare_gradients(out_cpu, out_cuda, leaves(m_cpu, fwd_cpu), leaves(m_cuda, fwd_cuda), what)


def moduleinfo_cases(names: set[str] | None = None):
    from torch.testing._internal.common_modules import module_db

    for mi in module_db:
        if names is None or mi.name in names:
            yield mi


# --------------------------------------------------------------------------------------------
# OptimizerInfo

def run_optiminfo(optim_info, impl: str | None, steps: int = 3) -> Result:
    cls = optim_info.optim_cls
    result = Result(f"optim/{cls.__name__}/{impl or 'default'}")
    try:
        optim_inputs = optim_info.optim_inputs_func(device="cpu")
    except TypeError:
        optim_inputs = optim_info.optim_inputs_func()
    for i, oi in enumerate(optim_inputs):
        kwargs = dict(oi.kwargs)
        if impl is not None:
            kwargs[impl] = True
        # Left to choose, torch.optim picks foreach for cuda params and the for-loop for CPU ones
        # (as on a real GPU); the CPU reference runs the implementation cuda picked.
        cpu_kwargs = dict(kwargs)
        if impl is None and _defaults_to_foreach(cls) and "foreach" not in kwargs and _foreach_is_default_on(DEVICE):
            cpu_kwargs["foreach"] = True
        result.tally(lambda: _check_optimizer(cls, cpu_kwargs, kwargs, steps, f"input {i} ({oi.desc})"))
    return result


def _defaults_to_foreach(cls) -> bool:
    """Whether the optimizer resolves foreach=None by device (torch.optim's _default_to_fused_or_foreach)."""
    import inspect
    import sys

    return "_default_to_fused_or_foreach" in inspect.getsource(sys.modules[cls.__module__])


def _foreach_is_default_on(device: str) -> bool:
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    return device in _get_foreach_kernels_supported_devices()


def _make_params(device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    return [torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes]


def _check_optimizer(cls, cpu_kwargs: dict, kwargs: dict, steps: int, what: str) -> str | None:
    def train(device: str):
        params = _make_params(device)
        opt = cls(params, **(cpu_kwargs if device == "cpu" else kwargs))
        g = torch.Generator().manual_seed(SEED + 1)
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(device)

            def closure():
                return sum((p * p).sum() for p in params)

            opt.step(closure) if "LBFGS" in cls.__name__ else opt.step()
        return [p.detach() for p in params], [
            v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)
        ]

    out_cpu, out_cuda, err_cpu, err_cuda = run_both(lambda: train("cpu"), lambda: train(DEVICE))
    err = check_errors(err_cpu, err_cuda, what)
    if err or err_cpu is not None:
        return err
    # Parameters stay on cuda; some state (e.g. `step`) is kept on the CPU by design, on a GPU too.
    return compare_trees(out_cpu[0], out_cuda[0], f"{what} params") or compare_trees(
        out_cpu[1], out_cuda[1], f"{what} state", allow_cpu=True)


def optiminfo_cases(names: set[str] | None = None):
    from torch.testing._internal.common_optimizers import optim_db

    for oi in optim_db:
        if names is not None and oi.optim_cls.__name__ not in names:
            continue
        impls = [None] + [i for i in ("foreach", "fused") if i in getattr(oi, "supported_impls", ())]
        for impl in impls:
            yield oi, impl


def describe_exception(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()
