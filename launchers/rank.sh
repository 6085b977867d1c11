#!/usr/bin/env bash
# One SLURM task is one rank: map SLURM's task ids onto the variables torch.distributed and DeepSpeed
# read (MASTER_ADDR / MASTER_PORT come from the batch script), print one line naming the rank, then
# become the worker (exec), so signals from SLURM reach the trainer itself, not a wrapper.
set -euo pipefail
export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_NTASKS"
export LOCAL_WORLD_SIZE="${SLURM_STEP_TASKS_PER_NODE%%[(,]*}"
echo "[megavg] job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: rank ${RANK} of ${WORLD_SIZE}" \
  "(local rank ${LOCAL_RANK} of ${LOCAL_WORLD_SIZE}) on ${SLURMD_NODENAME:-$(hostname -s)}, master ${MASTER_ADDR}:${MASTER_PORT}," \
  "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}, ${OMP_NUM_THREADS:-?} threads"
# SIGUSR1 ignored until the trainer installs its handler: an early one is dropped rather than killing a
# rank that is still importing (a worker without a handler keeps running to SIGTERM at the time limit).
trap '' USR1
exec "$@"
