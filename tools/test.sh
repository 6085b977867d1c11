#!/usr/bin/env bash
# Install megavg with test extras, then run the default test suite (CPU, offline).
#   bash tools/test.sh [--quick | --all] [pytest arguments...]
# default: every test not marked `slow` (under 15 minutes on a 2-core machine).
# --all: every test, `slow` ones included (fresh-venv install, the docs tour, real-run exports...): what CI runs.
# --quick: the unit tests without a `slow`, `distributed`, `slurm` or `gpu` marker, less the ones listed in
# tests/quick_deselect.txt (measured heaviest): under 3 minutes on an idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=(-m "not slow")
if [ "${1:-}" = "--all" ]; then
  shift
  QUICK=()
elif [ "${1:-}" = "--quick" ]; then
  shift
  QUICK=(-m "not slow and not distributed and not slurm and not gpu")
  while read -r id _; do
    [ -n "$id" ] && [ "${id#\#}" = "$id" ] && QUICK+=("--deselect=$id")
  done < tests/quick_deselect.txt
fi
bash tools/install.sh
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && PY=.venv/bin/python
$PY -m ruff check .
rc=0
$PY -m pytest -q ${QUICK[@]+"${QUICK[@]}"} "$@" || rc=$?
[ -z "${VIRTUAL_ENV:-}" ] && echo "to use megavg in this shell:  source .venv/bin/activate"
exit "$rc"
