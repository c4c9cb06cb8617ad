#!/usr/bin/env bash
# Launch paths and ZeRO stages on this machine's GPUs, in one short run (see scripts/gpu_check.py):
#   scripts/gpu_check.sh            on CUDA: every GPU, nccl, the embedded 135M model
#   scripts/gpu_check.sh --cpu      on CPU: 2 processes, gloo, a tiny model (checks the script itself)
# Prints a table of the checks with their times; exits 1 when one failed. Logs in runs/gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=$(command -v python3)
exec "$PY" scripts/gpu_check.py "$@"
