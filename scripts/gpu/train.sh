#!/usr/bin/env bash
# GPU machine, the last device command (docs/gpu_training.md): join and check every part, install
# the carried wheels, train by priority within BUDGET seconds (default 540), results into $OUT.
# Usage: bash scripts/gpu/train.sh BUNDLE [BUDGET]
set -uo pipefail
bundle=$(cd "${1:?usage: train.sh BUNDLE [BUDGET]}" && pwd)
: "${OUT:?OUT must name the folder whose files come back}"
cd "$(dirname "$0")/../.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" -m llmcxr.gpu_kit drive --bundle "$bundle" \
  --out "$OUT" --budget "${2:-540}"
