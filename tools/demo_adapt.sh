#!/usr/bin/env bash
# `bash tools/demo.sh adapt`: the AE-Adapt-V chain on CPU, end to end, on the first demo's autoencoder
# (runs/dcaev_demo, trained first when absent) and a tiny Wan DiT: latent pre-computation (2 parts) ->
# phase 1 alignment -> phase 2 patch/head -> phase 3 LoRA -> merge -> export -> generate. Each phase is a
# real `deepspeed` launch of 2 CPU processes (ZeRO-3). Resumable: every stage whose output exists is
# skipped, a finished training phase is recognised by `megavg.train --check` (exit 3) without starting
# DeepSpeed. Outputs under runs/adapt_demo (docs/demo.md). Called by tools/demo.sh with PY set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
D=runs/adapt_demo
STEPS="${ADAPT_DEMO_STEPS:-8}"  # optimizer steps per phase
DEEPSPEED="$($PY -c 'import os, sys; print(os.path.dirname(sys.executable))')/deepspeed"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
$PY -c "import torch, sys; sys.exit(torch.cuda.is_available())" && export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
say() { echo "== adapt demo: $*"; }

# the demo autoencoder (DC-AE-V f8t4c16) as a model folder
if [ ! -f runs/dcaev_demo/checkpoints/latest ]; then
  say "no runs/dcaev_demo yet: training the first demo's autoencoder (bash tools/demo.sh, ~3 minutes)"
  bash tools/demo.sh
fi
[ -d "$D/dcae" ] || $PY tools/consolidate.py runs/dcaev_demo --out "$D/dcae"
# tiny parts: umT5, base Wan DiT (patch 2, 4 channels) and its Wan VAE; the student on DC-AE-V latents
[ -d "$D/tiny/wan" ] || $PY tests/infer/tiny_pipeline.py "$D/tiny" --adapt
[ -d "$D/student0" ] || $PY tools/make_student.py --base "$D/tiny/base" --in-channels 16 --out-channels 16 \
  --out "$D/student0"
# latent shards: 2 parts (one per rank), 2 shards each, with the teacher VAE's latents for phase 1
for part in 0 1; do
  [ -f "$D/latents/part-0000$part/index.json" ] || $PY -m megavg.infer.precompute --vae "$D/dcae" \
    --shards runs/demo_shards --text-encoder "$D/tiny/text" --teacher-vae "$D/tiny/wan" --frames 16 \
    --size 64 64 --samples-per-shard 1 --part "$part" --parts 2 --device cpu --out "$D/latents"
done

# one phase: megavg.train --check (exit 3: already finished), then 2 CPU ranks under deepspeed
TINY=(model.preset= parallel.sp_size=1 "data.shards=$D/latents/part-*/*.tar" "schedule.steps=$STEPS"
      schedule.warmup_steps=0 "checkpoint.every=$STEPS" logging.every=2 logging.tensorboard=false)
phase() {
  local name=$1 config=$2; shift 2
  local args=(--config "configs/train/$config.yaml" "${TINY[@]}" "run.dir=$D/$name" "$@")
  local status=0; $PY -m megavg.train --check "${args[@]}" >/dev/null || status=$?
  if [ "$status" = 0 ]; then
    say "$name ($config, $STEPS steps, 2 processes)"
    local port; port="$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$DEEPSPEED" --num_gpus 2 --master_port "$port" --log_level warning --module megavg.train "${args[@]}"
  elif [ "$status" != 3 ]; then
    exit "$status"
  fi
  [ -d "$D/$name-model" ] || $PY tools/consolidate.py "$D/$name" --out "$D/$name-model"
}
phase align adapt_1_align "model.init=$D/student0" "task.args.teacher=$D/tiny/base"
phase head adapt_2_head "model.init=$D/align-model"
phase lora adapt_3_lora "model.init=$D/head-model" task.args.rank=8 task.args.alpha=16 model.ema.decay=null

# export the merged model with the demo autoencoder and umT5, then generate
[ -d "$D/pipeline" ] || $PY tools/export_pipeline.py --transformer "$D/lora-model" --vae "$D/dcae" \
  --text-encoder "$D/tiny/text" --out "$D/pipeline" --dtype fp32
[ -f "$D/fox.mp4" ] || $PY -m megavg.infer.generate "$D/pipeline" --prompt "a red fox in snow" \
  --out "$D/fox.mp4" --size 64 64 --frames 16 --steps 4 --dtype fp32 --no-progress
echo
echo "latent shards    : $D/latents   (2 parts x 2 shards, with teacher_latents)"
echo "phases           : $D/align $D/head $D/lora   (merged model: $D/lora-model)"
echo "pipeline         : $D/pipeline"
echo "video            : $D/fox.mp4   (a tiny untrained DiT: noise-like; the mechanics are the real ones)"
