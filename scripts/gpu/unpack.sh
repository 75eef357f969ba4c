#!/usr/bin/env bash
# CPU, after the window (docs/gpu_training.md): turn the files the last device command returned
# into runs/gpu/latest/{model,tokenizer,classifier_export,image_tokens,logs}.
# Usage: bash scripts/gpu/unpack.sh RETURNED_FOLDER [--install-default] [--out DIR]
set -euo pipefail
returned=$(cd "${1:?usage: unpack.sh RETURNED_FOLDER [--install-default]}" && pwd)
shift
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m llmcxr.gpu_kit unpack "$returned" --bundle gpu_bundle "$@"
