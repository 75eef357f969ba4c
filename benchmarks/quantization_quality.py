"""What int8, fp16 weights or bf16 cost in quality: a cheap proxy on held-out records, vs fp32.

    .venv/bin/python benchmarks/quantization_quality.py [--records 200] [--reports 20]

- Teacher-forced mean negative log-likelihood of the response tokens of `--records` test-split
  records (shuffled with a fixed seed), image-code targets and text targets apart
  (`llmcxr.lit_module.split_token_losses`, as validation during training).
- Greedy reports for `--reports` test images (cxr_to_report records, codes from the token
  cache): the rate at which each mode's report equals the fp32 one exactly.
Not the evaluation (`llmcxr evaluate`): a difference well inside the NLL's noise says the mode is
safe to try there. Writes benchmarks/results/quantization_quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cxrcommon.files import atomic_write

REPO = Path(__file__).resolve().parents[1]


def load(model: Path | None, mode: str) -> Any:
    """The pipeline in one mode: fp32, int8 or fp16 weights (fp32 then quantised), or bf16."""
    from llmcxr.devices import WEIGHT_MODES
    from llmcxr.pipeline import LLMCXR

    dtype = "bfloat16" if mode == "bf16" else "float32"
    llm = LLMCXR.from_pretrained(model, device="cpu", dtype=dtype)
    return llm.quantize(mode) if mode in WEIGHT_MODES else llm


def encoded_records(
    llm: Any, data: Path, stage: str, count: int, max_length: int
) -> tuple[list, list]:
    """`count` encoded test examples (fixed shuffle) and the shuffled test records."""
    from datasets import load_from_disk

    from llmcxr.data import RecordEncoder
    from llmcxr.token_cache import ImageTokenCache

    records = list(load_from_disk(str(data / stage))["test"])
    random.Random(0).shuffle(records)
    cache = ImageTokenCache.load(data / "image_tokens")
    encoder = RecordEncoder(llm.text_tokenizer, llm.token_map, llm.prompt_format)
    examples, _ = encoder.encode_all(records[: count * 2], cache, max_length, desc="test records")
    return examples[:count], [
        r for r in records if r["task"] == "cxr_to_report" and r["image_id"] in cache
    ]


@torch.inference_mode()
def mean_nll(llm: Any, examples: list, batch: int) -> dict[str, float]:
    """Token-weighted mean NLL over response tokens: all, image codes, text."""
    from llmcxr.data import PadCollator
    from llmcxr.lit_module import split_token_losses

    collate = PadCollator(llm.pad_token_id)
    sums = {"all": 0.0, "image": 0.0, "text": 0.0}
    counts = dict.fromkeys(sums, 0)
    for start in range(0, len(examples), batch):
        b = collate(examples[start : start + batch])
        logits = llm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        terms = split_token_losses(logits, b["labels"], llm.token_map)
        for name in sums:
            n = int(terms[f"{name}_tokens"])
            sums[name] += float(terms["loss" if name == "all" else f"loss_{name}"]) * n
            counts[name] += n
    return {
        **{f"nll_{k}": round(sums[k] / max(counts[k], 1), 4) for k in sums},
        **{f"{k}_tokens": counts[k] for k in counts},
    }


def greedy_reports(llm: Any, records: list, data: Path, batch: int) -> list[str]:
    """Greedy reports for the images of `records` (their cached codes), in batches."""
    from llmcxr.decoding import Sampling
    from llmcxr.token_cache import ImageTokenCache

    cache = ImageTokenCache.load(data / "image_tokens")
    prompts = [
        llm.encode_prompt(
            llm.prompt_format.render(r["instruction"], r["input"]), [cache.get(r["image_id"])]
        )
        for r in records
    ]
    max_new = llm.generation_defaults.report_max_new_tokens
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        out += llm._generate_text(
            prompts[start : start + batch], max_new, Sampling(do_sample=False)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder (default: the shipped one)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO / "runs" / "default_model" / "data",
        help="built instruction dataset with its image_tokens cache",
    )
    parser.add_argument("--stage", default="stage1")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--reports", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--modes",
        default="fp32,int8",
        help="comma-separated: fp32 (the reference), int8, fp16, bf16",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "quantization_quality.json"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ["fp32", *[m for m in args.modes.split(",") if m != "fp32"]]
    result: dict[str, Any] = {
        "model": str(args.model or "llmcxr/default_model"),
        "data": str(args.data),
        "stage": args.stage,
        "split": "test",
        "modes": {},
    }
    reference: list[str] = []
    for mode in modes:
        llm = load(args.model, mode)
        if mode == "fp32":
            examples, report_records = encoded_records(
                llm, args.data, args.stage, args.records, args.max_length
            )
            report_records = report_records[: args.reports]
            result["records"], result["report_images"] = len(examples), len(report_records)
        start = time.perf_counter()
        entry: dict[str, Any] = mean_nll(llm, examples, args.batch)
        entry["nll_seconds"] = round(time.perf_counter() - start, 1)
        reports = greedy_reports(llm, report_records, args.data, args.batch)
        if mode == "fp32":
            reference = reports
        else:
            entry["greedy_report_exact_match_vs_fp32"] = round(
                sum(a == b for a, b in zip(reports, reference)) / max(len(reports), 1), 3
            )
        entry["greedy_reports"] = reports
        result["modes"][mode] = entry
        print(mode, {k: v for k, v in entry.items() if k != "greedy_reports"}, flush=True)
        del llm
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
