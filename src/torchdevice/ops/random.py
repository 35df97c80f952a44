"""``torch.cuda`` random number generation on the emulated device.

Nothing needs replacing at the Python level: torch's own ``torch.cuda.random`` functions
(``manual_seed(_all)``, ``seed(_all)``, ``initial_seed``, ``get/set_rng_state(_all)``) work on
``torch.cuda.default_generators``, which the shims fill with the native core's per-device
emulated generators, and find the current device through the ``torch._C._cuda_getDevice``
binding (ops.device). ``torch.manual_seed``/``torch.seed`` reach them through
``torch.cuda.manual_seed_all``, and ``torch.Generator('cuda')`` is created by the C++ hooks.

Ops without a generator argument (``randn``'s default overload, ``native_dropout``...) are
routed to the device's generator by the native core.

The state is CUDA's (runtime/generator.h): 16 bytes, a uint64 seed and an int64 Philox offset,
for ``get/set_rng_state(_all)``, ``Generator('cuda').get_state/set_state``,
``graphsafe_get/set_state`` and ``torch.cuda._get/_set_rng_state_offset``. Each random op moves the
offset on by the numbers it returned, rounded up to CUDA's multiple of 4 (a GPU moves it by a
launch-dependent amount). What is equal to what:

* after ``manual_seed(s)``, the draws are the CPU's for a CPU generator seeded with ``s``;
* a state this process handed out restores, from its tensor or any copy of its bytes while that
  tensor is alive, to exactly the numbers that followed it (``fork_rng``,
  ``torch.utils.checkpoint``, replay loops);
* any other state (saved on a GPU, by another process, or whose tensor is gone) restores to the
  numbers of a CPU generator seeded from (seed, offset): the same numbers at every restore, but
  neither the GPU's nor those that followed it where it was saved.
"""

from __future__ import annotations

OWNER = "ops.random"


def apply_patches() -> None:
    """No Python patch is needed (see the module docstring); kept so each area has one entry point."""
