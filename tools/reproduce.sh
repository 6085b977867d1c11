#!/usr/bin/env bash
# The miniature DC-VideoGen reproduction (docs/reproduction.md): world -> two DC-AE-V autoencoders -> latents
# -> base Wan DiT -> AE-Adapt-V, its ablation and the from-scratch student -> FVD / prompt accuracy / latency
# -> benchmarks/results/reproduction.json, docs/reproduction.md and its images. Resumable: a stage with a
# DONE.json in runs/repro/<stage>/ is skipped. --smoke: every stage at toy size into runs/repro_smoke
# (mechanics only, a few minutes). Other arguments: python -m megavg.repro --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python; [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
exec "$PY" -m megavg.repro "$@"
