#!/usr/bin/env bash
# GPU machine, device commands 1..N-1 (docs/gpu_training.md): check that part PART of the bundle
# arrived intact. Usage: bash scripts/gpu/receive.sh BUNDLE PART
set -euo pipefail
bundle=$(cd "${1:?usage: receive.sh BUNDLE PART}" && pwd)
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" -m llmcxr.gpu_kit receive --bundle "$bundle" --part "${2:?part number}"
