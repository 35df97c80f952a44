"""Real libraries on the emulated GPU, through their own device-selection code.

Marked ``integration``; the libraries are pinned in requirements-integration.txt and installed
with ``pip install -c constraints-integration.txt -r requirements-integration.txt`` so pip never
replaces torch. A library that is not installed skips its tests (the reason names the install command).
"""

from __future__ import annotations

import gc

import pytest

import torchdevice  # noqa: F401  - activates the emulated device before the libraries import torch
import torch

def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs a real third-party library on the emulated GPU")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def cuda_peak():
    """Resets the peak counter; call the returned function for the bytes used on cuda:0 since."""
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    return lambda: torch.cuda.max_memory_allocated() - baseline
