"""torchdevice: PyTorch code written for CUDA runs unmodified where there is no NVIDIA GPU.

``import torchdevice`` (before or after ``import torch``) activates the backend chosen by
``TORCH_DEVICE_BACKEND`` (auto|cpu|mps|cuda); ``TORCHDEVICE_EMULATE=mps`` emulates Apple's mps
instead of cuda. Tensors on the emulated device really say ``cuda:0`` (or ``mps:0``); every op
runs the CPU kernel on the same memory and gives its result bit for bit.
"""

from __future__ import annotations

__version__ = "0.1.0"

from torchdevice import _native
from torchdevice.core import device as _device
from torchdevice.core import startup as _startup
from torchdevice.core.logger import configure_from_env as _configure_logging
from torchdevice.core.logger import logger as _logger
from torchdevice.core.patch import REGISTRY as _REGISTRY

plan: _device.Plan | None = None  # decided by activate()
activation: dict = {}
_hooks_preloaded = False
_active = False


def activate() -> _device.Plan:
    """Activate the backend the environment asks for; once per process (later calls return the plan).

    ``import torchdevice`` calls it, except at the start of torchdevice's command line (which
    calls it after reading its options) and from the ``.pth`` hook (on the first ``import torch``);
    see ``torchdevice.core.startup``. Raises ValueError/RuntimeError for a bad environment.
    """
    global plan, torch, _hooks_preloaded, _active
    if _active:
        return plan
    _startup.remove_import_hook()
    plan = _startup.check_environment()
    _configure_logging()
    # Before torch exists, so torch picks our CUDA hooks from its own registry. Not on a CUDA build
    # of torch: there its real hooks register too, and the registry would print a warning about the
    # duplicate; the hooks object is taken over after import instead.
    _hooks_preloaded = bool(plan.emulated) and not _device.torch_has_cuda_build() and _native.preload(plan.emulated[0])
    import torch

    _active = True
    _activate()
    _startup.after_activation()
    return plan


def _preload_for_hook() -> None:
    p = _device.plan()
    if p.emulated and not _device.torch_has_cuda_build():
        _native.preload(p.emulated[0])


def _activate() -> None:
    if not plan.emulated:
        _logger.info("runner %s: nothing to emulate", plan.runner)
        return
    from torchdevice import _C

    activation.update(_C.activate(plan.emulated[0], plan.device_count, plan.runner))
    if plan.emulated[0] == "mps":
        from torchdevice.shims import mps as _mps_shims

        _mps_shims.apply_patches()
    else:
        from torchdevice import ops as _ops
        from torchdevice.shims import cuda as _cuda_shims

        _cuda_shims.apply_patches()
        _ops.apply_patches()
        # CUDA itself initializes on first use (torch.cuda.is_initialized() is False until then).
    from torchdevice.core import shutdown as _shutdown

    # Registered now, before user code adds exit handlers, so it runs after theirs.
    _shutdown.install(plan.emulated, plan.device_count)
    _logger.info(
        "emulating %s on %s: %d device(s), hooks via %s",
        ", ".join(plan.emulated), plan.runner, plan.device_count, activation.get("hooks_route"),
    )


def patches():
    """Print and return every Python-level patch torchdevice applied."""
    print(_REGISTRY.describe())  # noqa: T201 - this function's purpose is to print
    return list(_REGISTRY)


def _activate_from_pth() -> None:
    """Called by torchdevice-activate.pth after importing the package: activate on `import torch`."""
    if _mode == _startup.SITE:
        _startup.activate_from_pth(activate, _preload_for_hook)


_mode = _startup.mode()
if _mode == _startup.NOW:
    activate()
