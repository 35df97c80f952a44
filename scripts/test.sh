#!/usr/bin/env bash
# The project's test command: set up .venv, then run the Python tests and the C++ tests.
# Arguments are passed to pytest (e.g. `bash scripts/test.sh tests/test_cli.py -x`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# TORCH_VERSION selects the torch release to test against (see setup_env.sh).
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
export TORCH_VERSION
bash scripts/setup_env.sh
if [[ "$TORCH_VERSION" == "2.13.0" ]]; then VENV=".venv"; else VENV=".venv-torch-$TORCH_VERSION"; fi
PY="$VENV/bin/python"
BUILD_DIR="build/torch-$TORCH_VERSION"

status=0
# Tests run in parallel (pytest-xdist), one worker per core: many start fresh interpreters or
# torchrun jobs and wait on them. PYTEST_WORKERS=0 runs them in this process.
WORKERS="${PYTEST_WORKERS:-auto}"
echo "test: pytest (torch $TORCH_VERSION, $WORKERS workers)"
"$PY" -m pytest -q -n "$WORKERS" "$@" || status=$?

# The C++ test binary is built by the editable install (TORCHDEVICE_BUILD_TESTS=ON in pyproject).
if [[ ! -f "$BUILD_DIR/CTestTestfile.cmake" ]]; then
  echo "test: no C++ test build in $BUILD_DIR" >&2
  status=1
else
  echo "test: ctest in $BUILD_DIR"
  "$VENV/bin/ctest" --test-dir "$BUILD_DIR" --output-on-failure || status=$?
fi

# PyTorch's own device-generic tests, cuda instantiation against cpu (tests/pytorch_suite/run.py;
# they live outside the repository, in ../shared/pytorch-tests). On the CPU build only, and only
# for a whole-suite run: it takes a few minutes.
if [[ "$TORCH_VERSION" == "2.13.0" && $# -eq 0 ]]; then
  tests_dir="${TORCHDEVICE_PYTORCH_TESTS:-../shared/pytorch-tests}"
  if [[ -d "$tests_dir" ]]; then
    echo "test: PyTorch's device-generic tests from $tests_dir"
    "$PY" tests/pytorch_suite/run.py --tests-dir "$tests_dir" || status=$?
  else
    echo "test: no PyTorch test folder at $tests_dir: its comparison is skipped" >&2
  fi
fi

exit "$status"
