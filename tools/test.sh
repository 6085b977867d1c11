#!/usr/bin/env bash
# Install megavg with test extras, then run the default test suite (CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && PY=.venv/bin/python
$PY -m ruff check .
$PY -m pytest -q "$@"
