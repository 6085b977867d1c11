#!/usr/bin/env bash
# megavg on one machine, same interface as launchers/megavg.sbatch (see README, section SLURM):
#
#   [MEGAVG_NPROC=N] bash launchers/local.sh train CONFIG [section.key=value ...]
#                    bash launchers/local.sh precompute ARGS... | export RUN_DIR --out FOLDER
#
# N ranks (default: one per visible GPU -- CUDA_VISIBLE_DEVICES, else nvidia-smi -- else 1) started by DeepSpeed's launcher
# (`deepspeed --num_gpus N`; on CPU it runs gloo processes). Ctrl-C, SIGTERM or SIGUSR1 ask every rank
# to write a complete checkpoint and exit 75 (a second Ctrl-C kills); rerunning the command resumes.
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

job="${1:-}"
megavg_prepare "$@"

gpus="$(megavg_visible_gpus)"
nproc="${MEGAVG_NPROC:-$([ "${gpus:-0}" -gt 0 ] && echo "$gpus" || echo 1)}"
[ "$MEGAVG_SINGLE" = 1 ] && nproc=1
megavg_comm_env "${gpus:-0}"
megavg_preflight "$nproc"
port="${MEGAVG_MASTER_PORT:-$("$MEGAVG_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"

if [ "$nproc" -eq 1 ]; then
  cmd=("$MEGAVG_PYTHON" -u -m "$MEGAVG_MODULE")
else
  # warnings only from DeepSpeed's launcher (as tools/demo.sh), and on a CPU machine the accelerator named:
  # no auto-detection lines, no CUDA_VISIBLE_DEVICES line
  cmd=("$MEGAVG_PYTHON" -m deepspeed.launcher.runner --num_gpus "$nproc" --master_port "$port" --no_local_rank
    --log_level warning --module "$MEGAVG_MODULE")
  [ "${gpus:-0}" -gt 0 ] || export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi
megavg_log "$job: $nproc rank(s), backend $MEGAVG_BACKEND: ${cmd[*]} ${MEGAVG_ARGS[*]}"

# The ranks run in their own process group with SIGUSR1 ignored by everything except the trainer (which
# installs its handler): DeepSpeed's launcher processes have no SIGUSR1 handler and would die of it.
(trap '' USR1 && exec setsid "${cmd[@]}" "${MEGAVG_ARGS[@]}") &
ranks=$!
stops=0
_megavg_local_stop() {
  stops=$((stops + 1))
  if [ "$stops" -eq 1 ]; then
    megavg_log "stop requested: every rank writes a checkpoint and exits $MEGAVG_EXIT_PREEMPTED"
    kill -USR1 -- "-$ranks" 2>/dev/null || true
  else
    kill -KILL -- "-$ranks" 2>/dev/null || true
  fi
}
trap _megavg_local_stop INT TERM USR1
megavg_wait "$ranks"
rc=$MEGAVG_WAIT_RC
case "$rc" in
  0) megavg_log "finished" ;;
  "$MEGAVG_EXIT_PREEMPTED") megavg_log "stopped with a complete checkpoint: rerun the same command to resume" ;;
  *) megavg_log "failed with exit code $rc" ;;
esac
exit "$rc"
