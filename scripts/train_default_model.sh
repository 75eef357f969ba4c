#!/usr/bin/env bash
# Reproduces the shipped default model (llmcxr/default_model, MODEL_CARD.md) from ../shared/data:
# the paired instruction build, then classifier -> tokenizer (clinical loss) -> LLM stage 1 -> stage 2,
# each from its config in configs/*/default_model*. On 2 CPU cores it takes about 1.5 hours; the CPU
# budgets are trainer.max_time / max_steps in those configs (raise them, or train on a GPU, for a
# better model). Outputs go to runs/default_model/; the last step copies the fp16 model folder into
# llmcxr/default_model/. Run scripts/install.sh first. DATA overrides the data folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
data="${DATA:-../shared/data}"
out=runs/default_model
step() { printf '\n==> %s\n' "$*"; }

step "1/6 paired instruction data (NIH ChestX-ray14 + COVID-19 Radiography images, OpenI reports)"
llmcxr data build --source paired --labelled "$data/nih_chestxray14" \
  --labelled "$data/covid_radiography_224" --out "$out/data"

step "2/6 CXR classifier for the clinical loss (test patients left out)"
llmcxr train classifier -c configs/classifier/default_model.yaml \
  --data.sources "[$data/nih_chestxray14]"

step "3/6 VQ-GAN tokenizer: pixel pre-training, then fine-tuning with the clinical loss"
llmcxr train tokenizer -c configs/vqgan/default_model_pretrain.yaml
llmcxr train tokenizer -c configs/vqgan/default_model.yaml
llmcxr export tokenizer --checkpoint "$out/vqgan/checkpoints/last.ckpt" --out "$out/tokenizer" \
  --dtype float16

step "4/6 LLM stage 1"
llmcxr train llm -c configs/llmcxr/default_model_stage1.yaml

step "5/6 LLM stage 2 (continues the stage-1 adapter; exports fp16)"
llmcxr train llm -c configs/llmcxr/default_model_stage2.yaml

step "6/6 ship the model folder"
rm -rf llmcxr/default_model
cp -r "$out/stage2/model" llmcxr/default_model
du -sh llmcxr/default_model
