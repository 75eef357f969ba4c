"""How much a report moves a model's likelihood of a real film's image codes.

For each film of a split (report->CXR records with an image), its tokenizer codes are
teacher-forced after three prompts: its own report, the bare instruction (the unconditional
prompt classifier-free guidance contrasts with) and the report of the next film whose label pool
differs. The mean NLL over the film's codes under each, and the gaps, say how much of the drawing
depends on the report at all: guidance can only amplify that gap.

    python benchmarks/drawing_likelihood.py --model llmcxr/default_model --model runs/drawc/model \
        --data runs/default_model/data --split val --limit 96 --seed 1 \
        --out benchmarks/results/guidance_cpu/drawing_likelihood_val.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from cxrcommon.files import atomic_write_text
from instructions import default_instruction
from llmcxr.evaluation.data import EvalRecord, EvalSplit
from llmcxr.evaluation.metrics import mean_interval
from llmcxr.evaluation.runner import subset
from llmcxr.pipeline import LLMCXR


def code_nll(llm: LLMCXR, prompt_text: str, codes: torch.Tensor) -> float:
    """Summed NLL (nats) of `codes` [N] drawn after `prompt_text` and the image start marker."""
    prompt = llm.encode_prompt(prompt_text).ids + [llm.token_map.start_id]
    targets = codes + llm.token_map.first_code_id
    ids = torch.tensor([prompt + targets.tolist()], device=llm.device)
    with torch.inference_mode():
        logits = llm.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logprobs = logits.log_softmax(-1).gather(1, targets.to(logits.device)[:, None])
    return -float(logprobs.sum())


def other_pool(records: list[EvalRecord], i: int) -> EvalRecord:
    """The next record (cyclically) whose report pool differs from record `i`'s."""
    n = len(records)
    for k in range(i + 1, i + n):
        if records[k % n].report_pool != records[i].report_pool:
            return records[k % n]
    raise ValueError("every record has the same report pool; no contrast to measure")


def measure(llm: LLMCXR, records: list[EvalRecord]) -> dict[str, object]:
    instruction = default_instruction("report_to_cxr")
    codes = llm.encode_images([r.image_path for r in records])
    own, bare, other = [], [], []
    for i, record in enumerate(records):
        render = llm.prompt_format.render
        own.append(code_nll(llm, render(instruction, record.report.strip()), codes[i]))
        bare.append(code_nll(llm, render(instruction), codes[i]))
        mismatch = other_pool(records, i).report.strip()
        other.append(code_nll(llm, render(instruction, mismatch), codes[i]))
    own_a, bare_a, other_a = map(np.asarray, (own, bare, other))
    gap = lambda a: {"mean": float(a.mean()), "ci95": mean_interval(a.tolist(), seed=0)}
    return {
        "nll_own": float(own_a.mean()),
        "nll_bare_instruction": float(bare_a.mean()),
        "nll_other_pool": float(other_a.mean()),
        "bare_minus_own": gap(bare_a - own_a),
        "other_pool_minus_own": gap(other_a - own_a),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder (repeat)")
    parser.add_argument("--data", required=True, help="built instruction dataset")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    split = EvalSplit(args.data, 2, args.split)
    records = subset(split.records("report_to_cxr", need_image=True), args.limit, args.seed)
    result = {
        "data": args.data,
        "split": args.split,
        "films": len(records),
        "seed": args.seed,
        "tokens_per_film": None,
        "machine": platform.processor() or platform.machine(),
        "models": {},
    }
    for folder in args.model:
        llm = LLMCXR.from_pretrained(folder, dtype="float32")
        result["tokens_per_film"] = llm.token_map.tokens_per_image
        row = measure(llm, records)
        result["models"][folder] = row
        print(
            f"{folder}: NLL own {row['nll_own']:.2f}, bare instruction "
            f"{row['nll_bare_instruction']:.2f}, another pool {row['nll_other_pool']:.2f} nats; "
            f"other pool - own {row['other_pool_minus_own']['mean']:+.2f} "
            f"{[round(x, 2) for x in row['other_pool_minus_own']['ci95']]}"
        )
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
