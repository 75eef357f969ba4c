#!/usr/bin/env bash
# CPU: build gpu_bundle/ for a GPU window (docs/gpu_training.md) from the default model's paired
# instruction data and its token cache (runs/default_model/data; build it with the first step of
# scripts/train_default_model.sh plus --both-directions), every labelled image set under DATA
# (128 px JPEG q80) and the wheels the GPU machine lacks (downloaded once into gpu_bundle/wheels).
# Prints the device commands; extra arguments go to `python -m llmcxr.gpu_kit pack`
# (e.g. --images with no folder after it packs no images: one command fewer, no image lane).
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${DATA:-../shared/data}"
sources=(nih_chestxray14 covid_radiography_224 peds_pneumonia_224 covid_cxnet
  covid_hannover_mlworkgroup covid_figure1 covid_actualmed covid_chestxray/manifest.jsonl)
exec .venv/bin/python -m llmcxr.gpu_kit pack --dataset "${DATASET:-runs/default_model/data}" \
  --bundle gpu_bundle --wheels gpu_bundle/wheels --fetch-wheels \
  --images "${sources[@]/#/$data/}" "$@"
