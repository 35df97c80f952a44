"""pytest plugin for the cuda runs of tests/pytorch_suite/run.py: skips the tests that
known_differences.txt marks ``skip``, each with its reason (prefixed ``torchdevice:``).

Loaded with ``-p tests.pytorch_suite.plugin``; the file comes from TORCHDEVICE_KNOWN_DIFFERENCES.
"""

from __future__ import annotations

import os
import pathlib

import pytest


def pytest_collection_modifyitems(config, items):
    path = os.environ.get("TORCHDEVICE_KNOWN_DIFFERENCES")
    if not path:
        return
    from tests.pytorch_suite.run import load_known

    skips = {key: entry.reason for key, entry in load_known(pathlib.Path(path)).items() if entry.kind == "skip"}
    for item in items:
        key = f"{pathlib.Path(item.location[0]).name}::{item.nodeid.split('::', 1)[1]}"
        if key in skips:
            item.add_marker(pytest.mark.skip(reason=f"torchdevice: {skips[key]}"))
