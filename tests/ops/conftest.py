"""Fixtures for the torch.cuda runtime tests (tests/ops).

The tests run in the pytest process with torchdevice active and the default single emulated
device; behaviour that needs another configuration (two devices, another capability) runs in a
fresh interpreter through ``run_snippet``, because the device count is fixed at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import torchdevice  # noqa: F401  - activates the emulated device before torch is used
import torch


# Variables that change what torchdevice emulates: a snippet starts without them (so a developer's
# shell cannot change outcomes) and gets only those its test passes.
_TORCHDEVICE_ENV = (
    "TORCH_DEVICE_BACKEND",
    "TORCHDEVICE_DEVICE_COUNT",
    "CUDA_VISIBLE_DEVICES",
    "TORCHDEVICE_CAPABILITY",
    "TORCHDEVICE_DEVICE_NAME",
    "TORCHDEVICE_TOTAL_MEMORY",
    "TORCHDEVICE_LOG_LEVEL",
)


@pytest.fixture
def run_snippet():
    """Run a snippet in a new interpreter with torchdevice imported; return its stdout.

    Environment variables for it (e.g. ``TORCHDEVICE_DEVICE_COUNT="2"``) are keyword arguments.
    The snippet fails the test with its stderr if it exits non-zero.
    """

    def run(code: str, **env: str) -> str:
        full_env = {k: v for k, v in os.environ.items() if k not in _TORCHDEVICE_ENV}
        full_env.update(env)
        source = "import torchdevice\nimport torch\n" + textwrap.dedent(code)
        proc = subprocess.run(
            [sys.executable, "-c", source], env=full_env, capture_output=True, text=True, timeout=240
        )
        if proc.returncode != 0:
            pytest.fail(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc.stdout

    return run


@pytest.fixture
def cuda_memory_baseline():
    """Allocated bytes on cuda:0 before the test (garbage collected first)."""
    import gc

    gc.collect()
    return torch.cuda.memory_allocated(0)


@pytest.fixture
def restore_memory_fraction():
    fraction = torch.cuda.get_per_process_memory_fraction(0)
    yield
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
