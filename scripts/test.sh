#!/usr/bin/env bash
# The project's test command: set up .venv, then run the Python tests and the C++ tests.
# Arguments are passed to pytest (e.g. `bash scripts/test.sh tests/test_cli.py -x`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup_env.sh
PY=".venv/bin/python"

status=0
echo "test: pytest"
"$PY" -m pytest -q "$@" || status=$?

# The C++ test binary is built by the editable install into build/<wheel tag> (pyproject's
# build-dir); take the most recently configured one should several tags be present.
ctest_file="$(ls -t build/*/CTestTestfile.cmake 2>/dev/null | head -n 1 || true)"
if [[ -z "$ctest_file" ]]; then
  echo "test: no C++ test build under build/*/ (pyproject sets TORCHDEVICE_BUILD_TESTS=ON)" >&2
  status=1
else
  echo "test: ctest in $(dirname "$ctest_file")"
  .venv/bin/ctest --test-dir "$(dirname "$ctest_file")" --output-on-failure || status=$?
fi

exit "$status"
