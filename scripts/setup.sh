#!/usr/bin/env bash
# Set up xkd in ./.venv: a CPU build of torch where there is no NVIDIA GPU (the default torch wheel
# is a multi-GB CUDA build), then the package with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install --quiet "torch>=2.6,<3"
  else
    .venv/bin/pip install --quiet "torch==2.13.0"
  fi
fi
.venv/bin/pip install --quiet -e ".[test]"
.venv/bin/xkd --version
