"""``torch.cuda`` random number generation on the emulated device.

Nothing needs replacing at the Python level: torch's own ``torch.cuda.random`` functions
(``manual_seed(_all)``, ``seed(_all)``, ``initial_seed``, ``get/set_rng_state(_all)``) work on
``torch.cuda.default_generators``, which the shims fill with the native core's per-device
emulated generators, and find the current device through the ``torch._C._cuda_getDevice``
binding (ops.device). ``torch.manual_seed``/``torch.seed`` reach them through
``torch.cuda.manual_seed_all``, and ``torch.Generator('cuda')`` is created by the C++ hooks.

Ops without a generator argument (``randn``'s default overload, ``native_dropout``...) are
routed to the device's generator by the native core. Known gaps, tracked by strict xfails in
tests/ops/test_random.py: the emulated generator has no Philox offset
(``torch.cuda._get_rng_state_offset``) and its state is not CUDA's 16-byte layout.
"""

from __future__ import annotations

OWNER = "ops.random"


def apply_patches() -> None:
    """No Python patch is needed (see the module docstring); kept so each area has one entry point."""
