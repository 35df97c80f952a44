"""Shared test setup.

torchdevice is imported before anything imports torch, so in-process tests get the same
start as a user's ``import torchdevice`` at the top of a script (the native core registers its
CUDA hooks before torch creates them). Tests about start-up, the environment or exit codes run in
fresh interpreters through the ``run_python`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pytest

import torchdevice  # noqa: F401 - must precede torch; see above

REPO_ROOT = Path(__file__).resolve().parent.parent

# How the CUDA hooks get installed when torchdevice is loaded before torch: from PyTorch's hooks
# registry on a CPU build; on a CUDA build of torch they are always taken over after import.
from torchdevice.core.device import torch_has_cuda_build  # noqa: E402

EARLY_HOOKS_ROUTE = "vtable" if torch_has_cuda_build() else "registry"

# Variables that change what torchdevice does. Fresh interpreters start without them, so a
# developer's shell cannot change test outcomes; tests set the ones they are about.
TORCHDEVICE_ENV = (
    "TORCH_DEVICE_BACKEND",
    "TORCHDEVICE_DEVICE_COUNT",
    "CUDA_VISIBLE_DEVICES",
    "TORCHDEVICE_LOG_LEVEL",
    "TORCHDEVICE_CAPABILITY",
    "TORCHDEVICE_DEVICE_NAME",
)
SUBPROCESS_TIMEOUT_S = 240


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if k not in TORCHDEVICE_ENV}
    result.update(env or {})
    return result


def python(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` in a fresh interpreter (this one's executable); output captured as text."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    if check and proc.returncode != 0:
        raise AssertionError(describe(proc))
    return proc


def python_code(code: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a (dedented) code snippet with ``python -c`` in a fresh interpreter."""
    return python(["-c", textwrap.dedent(code)], **kwargs)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed subprocess assertion should show."""
    return f"exit status {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_python(args, env=..., cwd=...)``: see :func:`python`."""
    return python


@pytest.fixture
def run_code() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_code(snippet, env=..., cwd=...)``: see :func:`python_code`."""
    return python_code


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(args, env=..., cwd=...)``: ``python -m torchdevice ARGS...`` in a fresh interpreter."""

    def run(args: Sequence[str], **kwargs) -> subprocess.CompletedProcess[str]:
        return python(["-m", "torchdevice", *args], **kwargs)

    return run
