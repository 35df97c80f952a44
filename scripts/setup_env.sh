#!/usr/bin/env bash
# Create the project's virtual environment (.venv) if missing, and install torchdevice into it.
# Idempotent: a second run only re-checks the packages and rebuilds the C++ incrementally.
#
#   PYTHON=python3.11 bash scripts/setup_env.sh    # choose the interpreter (default: python3)
#   TORCH_VERSION=2.14.1 bash scripts/setup_env.sh  # another torch release: its own venv and build
#   INTEGRATION=0 bash scripts/setup_env.sh         # skip the libraries of tests/integration
#
# Tested torch releases: 2.13.0 (CPU build, the default, the oldest supported), 2.14.1 and 2.15.0
# (the default Linux wheels: CUDA builds of ~5.5 GB; 2.15.0 is the newest release). Each gets its
# own venv and C++ build directory.
set -euo pipefail

# Some machines cap pip at the torch releases they keep on disk (a constraints file in pip's
# global config). Every install below pins torch itself, so that cap is lifted for these calls
# only: an empty constraints file replaces the configured one.
export PIP_CONSTRAINT=/dev/null

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
if [[ "$TORCH_VERSION" == "2.13.0" ]]; then VENV=".venv"; else VENV=".venv-torch-$TORCH_VERSION"; fi
INTEGRATION="${INTEGRATION:-1}"
BUILD_DIR="build/torch-$TORCH_VERSION"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup_env: creating $VENV with $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# torch is named, pinned, in every install command: pip must never swap the build torchdevice is
# compiled against for another (an unpinned resolve could fetch a different version or a CUDA build).
echo "setup_env: installing torch==$TORCH_VERSION and the build/test tools"
"$PY" -m pip install --quiet --disable-pip-version-check \
  "torch==$TORCH_VERSION" scikit-build-core ninja cmake pytest pytest-xdist expecttest numpy hypothesis pytest-timeout

# --no-build-isolation: build against the torch installed above, not one an isolated build
# environment would download. The C++ build (and its ctest binary) lives in $BUILD_DIR.
echo "setup_env: building and installing torchdevice (editable) in $BUILD_DIR"
"$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
  -C build-dir="$BUILD_DIR" -e . "torch==$TORCH_VERSION"

if [[ "$INTEGRATION" == "1" ]]; then
  # The libraries tests/integration drives, pinned, with torch held at this exact release.
  echo "setup_env: installing the integration-test libraries"
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements-integration.txt \
    -c <(echo "torch==$TORCH_VERSION")
  # torchvision is paired with one torch release each; on the CUDA wheel its CUDA kernels (loaded
  # after activation) are what tests/ops/test_extensions.py checks never run.
  case "$TORCH_VERSION" in
    2.14.1) TORCHVISION_VERSION="0.29.2" ;;
    *) TORCHVISION_VERSION="" ;;
  esac
  if [[ -n "$TORCHVISION_VERSION" ]]; then
    echo "setup_env: installing torchvision==$TORCHVISION_VERSION"
    "$PY" -m pip install --quiet --disable-pip-version-check "torchvision==$TORCHVISION_VERSION" \
      -c <(echo "torch==$TORCH_VERSION")
  fi
fi

"$PY" - "$TORCH_VERSION" <<'PYEOF'
import sys

import torch

expected = sys.argv[1]
print(f"setup_env: torch {torch.__version__} ({'CUDA' if torch.version.cuda else 'CPU'} build)")
if torch.__version__.split("+")[0] != expected:
    sys.exit(f"setup_env: expected torch {expected}, found {torch.__version__}")
PYEOF
