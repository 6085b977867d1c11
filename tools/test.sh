#!/usr/bin/env bash
# Install megavg with test extras, then run the default test suite (CPU, offline).
#   bash tools/test.sh [--quick] [pytest arguments...]
# --quick: only the unit tests (no `slow`, `distributed`, `slurm` or `gpu` marker), under 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=()
if [ "${1:-}" = "--quick" ]; then
  shift
  QUICK=(-m "not slow and not distributed and not slurm and not gpu")
fi
bash tools/install.sh
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && PY=.venv/bin/python
$PY -m ruff check .
rc=0
$PY -m pytest -q ${QUICK[@]+"${QUICK[@]}"} "$@" || rc=$?
[ -z "${VIRTUAL_ENV:-}" ] && echo "to use megavg in this shell:  source .venv/bin/activate"
exit "$rc"
