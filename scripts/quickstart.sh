#!/usr/bin/env bash
# The whole LLM-CXR chain on a fresh checkout: CPU, no downloads, a few minutes on 2 cores.
# Everything is tiny and trained for seconds, so the outputs show the mechanics, not medicine.
# Outputs (replaced on each run): runs/quickstart/, runs/vqgan_tiny/, runs/llmcxr_tiny/ (LLM),
# effusion.png and its report. Run scripts/install.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
out=runs/quickstart
rm -rf "$out" runs/vqgan_tiny runs/llmcxr_tiny
step() { printf '\n==> %s\n' "$*"; }

step "1/6 CXR classifier for the clinical loss (bundled fixtures, a few steps)"
python -m vqgan.classifier fit -c configs/classifier/tiny.yaml \
  --trainer.default_root_dir "$out/classifier" --trainer.logger.init_args.save_dir "$out/classifier" \
  --checkpoint.dirpath "$out/classifier/checkpoints"
python -m vqgan.classifier export --ckpt "$out/classifier/checkpoints/last.ckpt" --out "$out/classifier_export"

step "2/6 VQ-GAN tokenizer with the clinical loss on the bundled real CXRs"
python -m vqgan fit -c configs/vqgan/tiny.yaml \
  --model.loss.clinical_weight 1.0 --model.loss.clinical_weights "$out/classifier_export" \
  --trainer.default_root_dir "$out/vqgan" --trainer.logger.init_args.save_dir "$out/vqgan"
python -m vqgan.export runs/vqgan_tiny/checkpoints/last.ckpt "$out/tokenizer"

step "3/6 Tokenizer round trip: reconstruction and clinical-feature figures"
python benchmarks/tokenizer.py --tokenizer "$out/tokenizer" --classifier "$out/classifier_export" \
  --data tests/fixtures --limit 8 --output "$out/tokenizer_roundtrip.json"

step "4/6 LLM stage 1 (instruction data built from configs/llmcxr/tiny_reports.csv)"
python -m llmcxr.train fit -c configs/llmcxr/tiny.yaml

step "5/6 LLM stage 2 (starts from stage 1)"
python -m llmcxr.train fit -c configs/llmcxr/tiny_stage2.yaml

step "6/6 report -> CXR -> report with the tiny model"
model=runs/llmcxr_tiny/stage2/model
llmcxr generate-image "Left pleural effusion" --model "$model" --seed 0 -o effusion.png
llmcxr report effusion.png --model "$model" --json
printf '\nDone: effusion.png, %s/tokenizer_roundtrip.json, model folder %s\n' "$out" "$model"
