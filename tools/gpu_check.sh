#!/usr/bin/env bash
# One-command check of megavg's GPU paths (docs/gpu.md). On a machine without CUDA: one line, exit 0.
# With CUDA: installs Transformer Engine and flash-attn from prebuilt wheels where they exist (saying
# which could not be installed), then runs tools/gpu_check.py: the gpu-marked tests, one bf16 training
# step per task on tiny presets over NCCL (all visible GPUs), DC-AE-V streaming decode and `generate`,
# and prints one table (check, result, seconds, peak GPU memory).
# Options: --no-install (use what is installed); anything else goes to tools/gpu_check.py (--help).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
INSTALL=1
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exec "$PY" tools/gpu_check.py --help ;;
    *) ARGS+=("$arg") ;;
  esac
done

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to torch on this machine: nothing run"
  exit 0
fi

install_wheel() {  # $1 module to import, $2... pip requirement(s); wheels only: no source builds
  if "$PY" -c "import $1" 2>/dev/null; then echo "gpu_check: $1 already installed"; return; fi
  if "$PY" -m pip install --quiet --only-binary=:all: "${@:2}" 2>/dev/null && "$PY" -c "import $1" 2>/dev/null; then
    echo "gpu_check: installed $1 from a prebuilt wheel"
  else
    echo "gpu_check: NOT INSTALLED: $1 (no prebuilt wheel for this Python/torch/CUDA; its gpu tests skip)"
  fi
}
if [ "$INSTALL" = 1 ]; then
  install_wheel transformer_engine.pytorch "transformer-engine[pytorch]"
  install_wheel flash_attn flash-attn
fi
exec "$PY" tools/gpu_check.py "${ARGS[@]}"
