"""The build finds the environment's torch: ``pip install .`` needs no ``--no-build-isolation``.

pip's default build isolation runs CMake with the target interpreter but hides its
site-packages. These tests configure the project (no compilation) the way such a build does,
and the way a build with no torch anywhere does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CONFIGURE_TIMEOUT_S = 240
cmake = pytest.importorskip("cmake", reason="needs the cmake package (scripts/setup_env.sh installs it)")
ninja = pytest.importorskip("ninja", reason="needs the ninja package (scripts/setup_env.sh installs it)")


def _configure(tmp_path: Path, python: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The binaries themselves: the venv's `cmake` script is Python, which the overlay would hide.
    cmd = [os.path.join(cmake.CMAKE_BIN_DIR, "cmake"), "-S", str(REPO_ROOT), "-B", str(tmp_path / "build"),
           f"-DPython_EXECUTABLE={python}", "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={os.path.join(ninja.BIN_DIR, 'ninja')}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CONFIGURE_TIMEOUT_S)


def _isolating_overlay(tmp_path: Path) -> dict[str, str]:
    """The environment pip gives an isolated build: a sitecustomize that drops site-packages."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        sys.path[:] = [p for p in sys.path if "site-packages" not in p]
    """))
    env = dict(os.environ)
    env.update(PYTHONPATH=str(overlay), PYTHONNOUSERSITE="1")
    return env


def test_isolated_build_configures_against_the_environments_torch(tmp_path):
    env = _isolating_overlay(tmp_path)
    hidden = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, env=env)
    assert hidden.returncode != 0, "the overlay should hide torch, as pip's isolation does"
    proc = _configure(tmp_path, sys.executable, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch found outside the isolated build environment" in proc.stdout
    import torch

    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert os.path.dirname(torch.__file__) in cache


def test_build_without_any_torch_stops_with_one_line_saying_what_to_run(tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    python = str(bare / "bin" / "python")
    proc = _configure(tmp_path, python, dict(os.environ))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "--no-build-isolation" in line]
    assert len(lines) == 1, proc.stderr
    assert "cannot import torch" in lines[0] and f"pip install --no-build-isolation {REPO_ROOT}" in lines[0]
