#!/usr/bin/env bash
# Set up .venv, then train a CUDA-written model on this machine through torchdevice.
# Arguments go to the example (e.g. `bash scripts/demo.sh --steps 500`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The demo needs no integration-test libraries.
INTEGRATION="${INTEGRATION:-0}" bash scripts/setup_env.sh
exec .venv/bin/python -m torchdevice run examples/train_cuda_mlp.py "$@"
