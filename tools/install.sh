#!/usr/bin/env bash
# Install megavg (editable) with its training, test and evaluation extras into ./.venv, or into the active virtualenv.
# Installs the pinned CPU torch first where no torch is present (an unpinned torch pulls a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
else
  PY=python
fi
$PY -m pip install -q --upgrade pip >/dev/null
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "torch==2.13.0"
# setuptools prints an "Editable installation." banner (a warning of its build backend) on every install
PYTHONWARNINGS="ignore:Editable installation" $PY -m pip install -q -e ".[train,dev,eval]"
echo "megavg installed into $($PY -c 'import sys; print(sys.prefix)')"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  echo "to use it in this shell (once per new shell):  source .venv/bin/activate"
fi
