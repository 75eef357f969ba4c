"""Warm reports over real films: speculative decoding from the draft bank against one step per
token, and against plain `transformers.generate` at the same number of new tokens.

    .venv/bin/python benchmarks/drafting.py --images DIR [--images DIR] [--count 40]
        [--model FOLDER] [--dtype bfloat16] [--out benchmarks/results/drafting/FILE.json]

For each of `--count` films (every n-th file of the folders, sorted), round robin so a drifting
machine touches all alike: (a) `LLMCXR.generate_report` at batch 1 with the model's draft bank
(`llmcxr.drafting`), (b) the same with `draft=False` (one decode step per token), (c) plain
`transformers.generate` (sampled, top-p 0.92, the same prompt ids) for exactly as many new tokens
as (a) wrote. (a) and (b) include encoding the film; (c) does not. Seeds are the film's index,
so (a) and (b) sample different (equally likely) reports: their token counts are printed too.
Prints and writes medians and totals, (a)'s tokens per decoding forward, and every film's
figures. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, action="append", required=True)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--model", type=Path, default=REPO / "llmcxr" / "default_model")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: auto)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "drafting.json"
    )
    args = parser.parse_args(argv)

    from prompt_prefix import machine, pick_images, write_result  # this folder's benchmark

    from instructions import IMAGE_PLACEHOLDER, default_instruction
    from llmcxr import decoding, pipeline
    from llmcxr.pipeline import LLMCXR
    from vqgan import read_cxr

    films = pick_images(args.images, args.count)
    llm = LLMCXR.from_pretrained(args.model, device="cpu", dtype=args.dtype, quantize="none")
    if llm.drafts is None:
        raise SystemExit(f"{args.model} has no draft bank (llmcxr/drafting.py writes one)")
    ref = LLMCXR.from_pretrained(
        args.model, device="cpu", dtype=args.dtype, quantize="none", engine="transformers"
    )
    text = llm.prompt_format.render(default_instruction("cxr_to_report"), IMAGE_PLACEHOLDER)
    forwards: list[int] = []
    answers: list[int] = []
    step, generate = decoding._Stepper.__call__, pipeline.generate_text

    def counting_step(self: Any, *a: Any, **k: Any) -> Any:
        forwards.append(1)
        return step(self, *a, **k)

    def counting_generate(*a: Any, **k: Any) -> Any:
        out = generate(*a, **k)
        answers.append(len(out[0]))
        return out

    decoding._Stepper.__call__ = counting_step
    pipeline.generate_text = counting_generate
    warm = read_cxr(films[0])
    for draft in (True, False):
        llm.generate_report([warm], seed=0, draft=draft)
    rows: list[dict[str, Any]] = []
    for index, film in enumerate(films):
        image = read_cxr(film)
        row: dict[str, Any] = {"film": str(film)}
        for name, draft in (("drafted", True), ("one_step", False)):
            forwards.clear()
            start = time.perf_counter()
            (report,) = llm.generate_report([image], seed=index, draft=draft)
            row[f"{name}_s"] = time.perf_counter() - start
            row[f"{name}_tokens"] = answers[-1]
            row[f"{name}_forwards"] = len(forwards) - 1  # after the prompt's prefill
            row[f"{name}_report"] = report
        ids, mask = llm._pad([llm.encode_prompt(text, [llm.encode_images([image])[0]])])
        count = max(1, row["drafted_tokens"])
        torch.manual_seed(index)
        start = time.perf_counter()
        ref.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=count,
            min_new_tokens=count,
            do_sample=True,
            top_p=0.92,
            pad_token_id=llm.pad_token_id,
        )
        row["transformers_s"] = time.perf_counter() - start
        rows.append(row)
        print(
            f"{index + 1}/{len(films)} {film.name}: drafted {row['drafted_s'] * 1e3:.0f} ms "
            f"({row['drafted_tokens']} tokens, {row['drafted_forwards']} forwards), one step "
            f"{row['one_step_s'] * 1e3:.0f} ms ({row['one_step_tokens']} tokens), transformers "
            f"{row['transformers_s'] * 1e3:.0f} ms",
            flush=True,
        )
    decoding._Stepper.__call__, pipeline.generate_text = step, generate

    def median_ms(key: str) -> float:
        return round(statistics.median(r[key] for r in rows) * 1e3, 1)

    tokens = sum(r["drafted_tokens"] for r in rows)
    summary = {
        "films": len(rows),
        "median_ms": {k: median_ms(f"{k}_s") for k in ("drafted", "one_step", "transformers")},
        "total_s": {
            k: round(sum(r[f"{k}_s"] for r in rows), 2)
            for k in ("drafted", "one_step", "transformers")
        },
        "mean_tokens": {
            k: round(statistics.mean(r[f"{k}_tokens"] for r in rows), 2)
            for k in ("drafted", "one_step")
        },
        "drafted_tokens_per_forward": round(tokens / sum(r["drafted_forwards"] for r in rows), 2),
        "transformers_over_drafted_per_film_median": round(
            statistics.median(r["transformers_s"] / r["drafted_s"] for r in rows), 2
        ),
    }
    print(json.dumps(summary, indent=1), flush=True)
    result = {
        "model": str(args.model),
        "dtype": str(llm.model.dtype).removeprefix("torch."),
        "engine": type(llm.model).__name__,
        "packed": bool(getattr(llm.model, "packed", False)),
        "bank": {"reports": len(llm.drafts.sequences), "source": llm.drafts.source},
        "machine": machine(),
        "summary": summary,
        "films": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
