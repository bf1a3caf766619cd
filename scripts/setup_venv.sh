#!/usr/bin/env bash
# Create (or reuse) the virtual environment at .venv and install pvq into it.
# torch: if the venv has none, install torch==2.13.0 (the CPU build on machines that
# carry it locally); a venv that already holds a (GPU) torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet "torch==2.13.0"
fi
.venv/bin/pip install --quiet -e ".[test,lora,eval,gpu]"  # gpu: Triton (its interpreter runs the kernel tests on CPU)
