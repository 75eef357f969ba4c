#!/usr/bin/env bash
# CPU: the whole kit with tiny budgets (pack -> device commands on a plain copy -> unpack ->
# llmcxr report / generate-image); the test suite runs it too (tests/test_gpu_kit.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m llmcxr.gpu_kit dry-run --work "${1:-runs/gpu_dryrun}"
