#!/usr/bin/env bash
# Set up xkd in ./.venv: a CPU build of torch where there is no NVIDIA GPU (the default torch wheel
# is a multi-GB CUDA build), then the package with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --no-compile "torch>=2.6,<3"
  else
    .venv/bin/pip install --quiet --no-compile "torch==2.13.0"
  fi
fi
.venv/bin/pip install --quiet --no-compile -e ".[test]"
# Byte-compile what was installed on every core at once (pip compiles file by file, on one core): the imports
# read these files. Files already compiled are skipped when this runs again; the few that are written for
# newer Pythons (torch's tests of 3.12 syntax) do not compile, as under pip, which is why the status is ignored.
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" xkd_cli >/dev/null || true
.venv/bin/xkd --version
