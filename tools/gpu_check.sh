#!/usr/bin/env bash
# One-command check of megavg's GPU paths on a fresh node (docs/gpu.md). Without CUDA: one line, exit 0.
# With CUDA: installs the build tools from PyPI, says whether Transformer Engine's PyTorch extension and
# flash-attn import (building them only with --build), then runs tools/gpu_check.py over all visible GPUs
# and prints one table; a check that could not run reads "skipped: <why>", never "pass".
# Options: --no-install (install nothing); --build (pip install --no-build-isolation TE and flash-attn
# from source when missing: needs nvcc and cuDNN; MAX_JOBS defaults to 8); --cpu-rehearsal N (the same
# checks on N gloo CPU ranks with the stand-ins, no CUDA needed); anything else goes to tools/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
INSTALL=1
BUILD=0
REHEARSAL=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-install) INSTALL=0 ;;
    --build) BUILD=1 ;;
    --cpu-rehearsal) REHEARSAL=1; ARGS+=("$arg") ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exec "$PY" tools/gpu_check.py --help ;;
    *) ARGS+=("$arg") ;;
  esac
done

if [ "$REHEARSAL" = 1 ]; then  # CPU only: nothing to install, the stand-ins replace TE and flash-attn
  exec "$PY" tools/gpu_check.py "${ARGS[@]}"
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch on this machine: nothing run"
  exit 0
fi

# $1: the import megavg makes; $2: pip requirement; $3: how to get it without --build
ensure() {
  if "$PY" -c "$1" 2>/dev/null; then echo "gpu_check: $1: ok"; return; fi
  if [ "$BUILD" = 1 ]; then
    echo "gpu_check: building $2 from source (pip --no-build-isolation, MAX_JOBS=${MAX_JOBS:-8})"
    MAX_JOBS="${MAX_JOBS:-8}" NVTE_CUDA_ARCHS="${NVTE_CUDA_ARCHS:-90}" \
      "$PY" -m pip install --no-build-isolation "$2" && "$PY" -c "$1" && return
    echo "gpu_check: NOT INSTALLED: $2 (the source build failed: see pip's output above)"
  else
    echo "gpu_check: NOT INSTALLED: $1 ($3); its checks report skipped"
  fi
}
if [ "$INSTALL" = 1 ]; then
  # what --no-build-isolation builds need in the environment (pip's isolated build has no torch)
  "$PY" -m pip install --quiet setuptools wheel ninja packaging psutil
  ensure "import transformer_engine.pytorch" "transformer_engine[pytorch]" \
    "PyPI has only the source of TE's PyTorch extension: use an NGC PyTorch container, or --build"
  ensure "from flash_attn import flash_attn_func" "flash-attn" \
    "PyPI has only its source, whose setup fetches a matching wheel from GitHub or compiles: use --build"
fi
exec "$PY" tools/gpu_check.py "${ARGS[@]}"
