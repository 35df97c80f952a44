"""Automatic mixed precision on the emulated device.

Nothing needs replacing at the Python level. ``torch.autocast('cuda', ...)`` works because
emulated cuda tensors carry the AutocastCUDA dispatch key (the native core derives it from the
backend), so the CUDA autocast policy (fp16/bf16 casts, fp32 ops) applies exactly as on a GPU;
``torch.cuda.amp.autocast`` is a thin wrapper over it. ``torch.amp.GradScaler('cuda')`` is
enabled because ``torch.cuda.is_available()`` is True, and its kernels
(``_amp_foreach_non_finite_check_and_unscale_``, ``_amp_update_scale_``) run their CPU
implementations through the fallback. tests/ops/test_amp.py checks all of it.
"""

from __future__ import annotations

OWNER = "ops.amp"


def apply_patches() -> None:
    """No Python patch is needed (see the module docstring); kept so each area has one entry point."""
