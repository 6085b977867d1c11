# Shared by launchers/megavg.sbatch and launchers/local.sh (sourced, not run).
#
# Exit-code contract of the workers (megavg.train): 0 finished, 75 stopped by SIGUSR1/SIGTERM after a
# complete checkpoint (requeue and rerun the same command to resume), 2 bad input, anything else a crash.

MEGAVG_EXIT_BAD_INPUT=2
MEGAVG_EXIT_PREEMPTED=75
MEGAVG_PYTHON="${MEGAVG_PYTHON:-$(command -v python || command -v python3)}"

megavg_log() { echo "[megavg $(date -u +%H:%M:%S)] $*"; }

# One line on stderr (the job log), exit 2.
megavg_fail() {
  echo "error: $*" >&2
  exit "$MEGAVG_EXIT_BAD_INPUT"
}

# A job preset and its arguments -> MEGAVG_MODULE, MEGAVG_ARGS (the module's argv), MEGAVG_SINGLE (1: one
# process, not one per rank), after checks that would otherwise fail once per rank.
#   train CONFIG [section.key=value ...]   DC-AE-V training, AE-Adapt-V phases (the config's task.name)
#   precompute ARGS...                     latents: python -m megavg.infer.precompute ARGS (one part per rank)
#   export RUN_DIR --out FOLDER            latest checkpoint -> model folder (one process)
megavg_prepare() { # JOB ARGS...
  local job="${1:-}"
  shift || true
  MEGAVG_SINGLE=0
  case "$job" in
    train) MEGAVG_MODULE=megavg.train ;;
    precompute) MEGAVG_MODULE=megavg.infer.precompute ;;
    export) MEGAVG_MODULE=megavg.train.consolidate MEGAVG_SINGLE=1 ;;
    *) megavg_fail "unknown job '$job' (expected train, precompute or export)" ;;
  esac
  MEGAVG_ARGS=("$@")
  [ -x "$MEGAVG_PYTHON" ] || megavg_fail "no python found (set MEGAVG_PYTHON or activate the megavg environment)"
  "$MEGAVG_PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)' \
    "$MEGAVG_MODULE" 2>/dev/null ||
    megavg_fail "python module $MEGAVG_MODULE not found by $MEGAVG_PYTHON (install megavg there or set MEGAVG_PYTHON)"
  if [ "$job" = train ]; then
    [ -n "${1:-}" ] || megavg_fail "no config given (usage: train CONFIG [section.key=value ...])"
    [ -f "$1" ] || megavg_fail "$1: config file not found (relative paths start at $(pwd))"
    MEGAVG_ARGS=(--config "$@")
  fi
}

# Training only: the trainer's pre-flight (config, shards vs data-parallel ranks and loader workers, SP size
# vs world size and heads, validation) in this one process before any rank starts, so a mistake is one
# error line and no launcher report. A run that already finished exits 0 here (the check said so).
megavg_preflight() { # WORLD_SIZE
  [ "$MEGAVG_MODULE" = megavg.train ] || return 0
  local rc=0
  "$MEGAVG_PYTHON" -m megavg.train --check --world-size "$1" "${MEGAVG_ARGS[@]}" || rc=$?
  case "$rc" in
    0) ;;
    3) exit 0 ;;
    *) exit "$rc" ;;
  esac
}

# GPUs this process may use: CUDA_VISIBLE_DEVICES when set (CUDA numbers those from 0; SLURM sets it
# per task with --gpus-per-task / --gpu-bind), else the GPUs nvidia-smi lists.
megavg_visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    local ids
    IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
  else
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  fi
}

# Threads per rank: the CPUs SLURM gave each task (--cpus-per-task) win over an OMP_NUM_THREADS inherited
# from the submitting shell; MEGAVG_OMP_NUM_THREADS overrides both.
megavg_threads_env() {
  export OMP_NUM_THREADS="${MEGAVG_OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}}"
}

# srun options every job step needs: recent SLURM (22.05+) no longer passes the batch job's
# --cpus-per-task on to srun, so each task would get one CPU while OMP_NUM_THREADS says more.
megavg_srun_cpus() {
  MEGAVG_SRUN_CPUS=()
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    MEGAVG_SRUN_CPUS=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  fi
}

# NCCL on GPU nodes, gloo on CPU nodes (the trainer's parallel.backend=auto picks the same); threads per rank.
megavg_comm_env() { # GPUS_ON_NODE
  megavg_threads_env
  if [ -n "${MEGAVG_IFNAME:-}" ]; then
    export NCCL_SOCKET_IFNAME="$MEGAVG_IFNAME" GLOO_SOCKET_IFNAME="$MEGAVG_IFNAME"
  fi
  if [ "${1:-0}" -gt 0 ]; then
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    # a collective that can never finish (a rank died) aborts the process instead of hanging the job
    export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
    MEGAVG_BACKEND=nccl
  else
    MEGAVG_BACKEND=gloo
  fi
}

# Rendezvous from the allocation: the first node of the job is the master; the port is fixed per job and
# restart (the same on every node, different for two jobs sharing a node, free again after a requeue).
megavg_slurm_env() {
  MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  MASTER_PORT="${MEGAVG_MASTER_PORT:-$((20000 + (SLURM_JOB_ID * 8 + ${SLURM_RESTART_COUNT:-0}) % 40000))}"
  export MASTER_ADDR MASTER_PORT
  local gpus="${SLURM_GPUS_ON_NODE:-0}" tasks="${SLURM_TASKS_PER_NODE%%[(,]*}"
  if [ "$gpus" -gt 0 ] && [ "$tasks" != "$gpus" ]; then
    megavg_fail "one rank per GPU: this node has $gpus GPUs but $tasks tasks (use --ntasks-per-node=$gpus)"
  fi
  megavg_comm_env "$gpus"
}

# Run the job step in the background and wait for it, so the batch shell stays responsive: a SIGUSR1 or
# SIGTERM that reaches only the batch shell (#SBATCH --signal=B:USR1, scancel -b) is passed to the
# ranks as SIGUSR1 (srun forwards it to every task). Sets MEGAVG_STEP_RC.
megavg_run_step() { # SRUN_OPTIONS... -- COMMAND...
  srun "$@" &
  MEGAVG_STEP_PID=$!
  trap _megavg_forward_stop USR1 TERM
  megavg_wait "$MEGAVG_STEP_PID"
  MEGAVG_STEP_RC=$MEGAVG_WAIT_RC
  trap - USR1 TERM
}

# Wait for PID to exit, also across trapped signals (which interrupt `wait` with a code > 128).
# Sets MEGAVG_WAIT_RC to the process's exit code.
megavg_wait() { # PID
  MEGAVG_WAIT_RC=0
  wait "$1" || MEGAVG_WAIT_RC=$?
  while [ "$MEGAVG_WAIT_RC" -gt 128 ] && kill -0 "$1" 2>/dev/null; do
    MEGAVG_WAIT_RC=0
    wait "$1" || MEGAVG_WAIT_RC=$?
  done
}

_megavg_forward_stop() {
  megavg_log "batch shell got a stop signal: asking the ranks to checkpoint and exit"
  kill -USR1 "$MEGAVG_STEP_PID" 2>/dev/null || true
}

# The first 'error:' line any rank wrote (the workers print exactly one on bad input).
megavg_first_error() { # LOG_DIR
  grep -h -m 1 '^error: ' "$1"/rank*.log 2>/dev/null | head -n 1
}

# Decide what the job does after the step: finish, requeue itself, or fail with one line.
megavg_finish() { # STEP_RC RANK_LOG_DIR
  local rc="$1" logs="$2" restarts="${SLURM_RESTART_COUNT:-0}" state
  if [ "$rc" -eq 0 ]; then
    megavg_log "finished"
    exit 0
  fi
  if [ "$rc" -eq "$MEGAVG_EXIT_PREEMPTED" ]; then
    # RUNNING: the stop came from SIGUSR1 (--signal=USR1@T, scancel --signal=USR1). Otherwise SLURM is
    # already ending the job (scancel, time limit, preemption: COMPLETING) and must not be overridden.
    state="$(scontrol show job -o "$SLURM_JOB_ID" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)"
    if [ "$state" != RUNNING ]; then
      megavg_log "stopped with a complete checkpoint while SLURM ends the job ($state); not requeued (resubmit to resume)"
    elif [ "$restarts" -ge "${MEGAVG_MAX_RESTARTS:-50}" ]; then
      megavg_log "stopped with a complete checkpoint; $restarts restarts reached MEGAVG_MAX_RESTARTS, not requeued"
    else
      megavg_log "stopped with a complete checkpoint; requeueing (this is restart $restarts)"
      scontrol requeue "$SLURM_JOB_ID" && exit 0
      megavg_log "scontrol requeue failed: resubmit the same command to resume"
    fi
    exit "$rc"
  fi
  local line
  line="$(megavg_first_error "$logs")"
  echo "error: job step failed with exit code $rc${line:+: ${line#error: }} (rank logs: $logs)" >&2
  exit "$rc"
}
