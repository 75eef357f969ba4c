#!/usr/bin/env bash
# The whole LLM-CXR chain on a fresh checkout: CPU, no downloads, a few minutes on 2 cores.
# Everything is tiny and trained for seconds, so the outputs show the mechanics, not medicine.
# Outputs (replaced on each run): runs/quickstart/, runs/llmcxr_tiny/ (LLM),
# effusion.png and its report. Run scripts/install.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
out=runs/quickstart
rm -rf "$out" runs/llmcxr_tiny
step() { printf '\n==> %s\n' "$*"; }

step "1/6 CXR classifier for the clinical loss (bundled fixtures, a few steps)"
llmcxr train classifier -c configs/classifier/tiny.yaml \
  --trainer.default_root_dir "$out/classifier"
llmcxr export classifier --checkpoint "$out/classifier/checkpoints/last.ckpt" \
  --out "$out/classifier_export"

step "2/6 VQ-GAN tokenizer with the clinical loss on the bundled real CXRs"
llmcxr train tokenizer -c configs/vqgan/tiny.yaml \
  --model.loss.clinical_weight 1.0 --model.loss.clinical_weights "$out/classifier_export" \
  --trainer.default_root_dir "$out/vqgan"
llmcxr export tokenizer --checkpoint "$out/vqgan/checkpoints/last.ckpt" --out "$out/tokenizer"

step "3/6 Tokenizer round trip: reconstruction and clinical-feature figures"
python benchmarks/tokenizer.py --tokenizer "$out/tokenizer" --classifier "$out/classifier_export" \
  --data tests/fixtures --limit 8 --output "$out/tokenizer_roundtrip.json"

step "4/6 LLM stage 1 (data from configs/llmcxr/tiny_reports.csv, step 2's tokenizer)"
llmcxr data build --source csv --table configs/llmcxr/tiny_reports.csv \
  --out runs/llmcxr_tiny/data
llmcxr train llm -c configs/llmcxr/tiny.yaml --model.image_tokenizer "$out/tokenizer"

step "5/6 LLM stage 2 (starts from stage 1)"
llmcxr train llm -c configs/llmcxr/tiny_stage2.yaml

step "6/6 report -> CXR -> report with the tiny model"
model=runs/llmcxr_tiny/stage2/model
llmcxr generate-image "Left pleural effusion" --model "$model" --seed 0 -o effusion.png
llmcxr report effusion.png --model "$model" --json
printf '\nDone: effusion.png, %s/tokenizer_roundtrip.json, model folder %s\n' "$out" "$model"
