"""``torch.mps`` for the emulated mps device.

torch's own ``torch.mps`` and ``torch.backends.mps`` work unchanged once two things hold: the
native core's MPS hooks answer ``torch._C._mps_*`` (synchronize, seeds, memory figures, events,
profiler), and ``torch._C._has_mps`` says the build has MPS (it gates ``is_built()``,
``device_count()`` and the default generator).
"""

from __future__ import annotations

import torch

from torchdevice.core.patch import REGISTRY

OWNER = "shims.mps"


def apply_patches() -> None:
    REGISTRY.patch(torch._C, "_has_mps", True, owner=OWNER)
